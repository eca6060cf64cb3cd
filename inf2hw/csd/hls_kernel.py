"""ctypes binding of the HLS decode-attention kernel (hls/src/inf2_attention.cpp) built with g++.

Called by the emulated-CSD worker (inf2hw.csd) and by tests/test_hls.py to run the *same C++*
that would be synthesised for the SmartSSD FPGA, on the host CPU. Safe to use from several
processes: each process loads hls/build/libinf2attn.so on first use; a missing or stale library
is rebuilt with `make -C hls lib` under an exclusive file lock, and make writes the .so under a
temporary name then renames it. ctypes drops the GIL for the duration of a call.

Shapes and dtypes (rows = (sequence, KV-head) pairs, group = query heads per KV head, d = head_dim):
    q            [rows, group, d]          fp16
    k, v         [rows, capacity, d]       fp16, capacity >= ctx_len (the row stride in tokens)
    tail_k       [rows, n_tail, d]         fp16   tail_mode 1 (v1: buffered k/v join exactly)
    tail_v       [rows, n_tail, d]         fp16   tail_mode 1 and 2
    tail_scores  [rows, group, n_tail]     fp32   tail_mode 2 (v2: q.k_tail / sqrt(d), host-computed)
    -> out       [rows, group, d]          fp32   softmax(q K^T / sqrt(d)) V
    -> lse       [rows, group]             fp32   natural-log log-sum-exp of the scaled scores
Inputs may be numpy arrays or CPU torch tensors; fp16 C-contiguous inputs are passed without a
copy, anything else is converted. Results are numpy arrays, or torch tensors when q is a tensor.
Limits come from the kernel's compile-time config: d <= 128, group <= 8, n_tail <= 128.
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import shutil
import subprocess
from typing import Optional, Sequence, Tuple

import numpy as np

HLS_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "hls"))
LIB_PATH = os.environ.get("INF2_HLS_LIB") or os.path.join(HLS_DIR, "build", "libinf2attn.so")

_lib: Optional[ctypes.CDLL] = None
_config: Optional[dict] = None


class HlsKernelError(RuntimeError):
    """The kernel library cannot be built or loaded, or a call's arguments break its limits."""


def _sources() -> Sequence[str]:
    out = [os.path.join(HLS_DIR, "Makefile"), os.path.join(HLS_DIR, "src", "inf2_attention.cpp")]
    for sub in ("inf2_attn", "hls_shim"):
        d = os.path.join(HLS_DIR, "include", sub)
        out += [os.path.join(d, f) for f in sorted(os.listdir(d)) if f.endswith(".h")]
    return out


def _stale(path: str) -> bool:
    if not os.path.exists(path):
        return True
    if os.environ.get("INF2_HLS_LIB"):
        return False  # a user-supplied library is taken as is
    built = os.path.getmtime(path)
    return any(os.path.getmtime(s) > built for s in _sources())


def build_library(force: bool = False) -> str:
    """Build hls/build/libinf2attn.so if missing or older than its sources; return its path."""
    if not force and not _stale(LIB_PATH):
        return LIB_PATH
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        if os.path.exists(LIB_PATH):
            return LIB_PATH  # older than its sources, but nothing here can rebuild it
        raise HlsKernelError(f"hls_kernel: g++ not found; cannot build {LIB_PATH} (install g++ >= 12 or set INF2_HLS_LIB)")
    if shutil.which("make") is None:
        raise HlsKernelError(f"hls_kernel: make not found; cannot build {LIB_PATH}")
    os.makedirs(os.path.join(HLS_DIR, "build"), exist_ok=True)
    with open(os.path.join(HLS_DIR, "build", ".lib.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; the others wait, then see it fresh
        if force or _stale(LIB_PATH):
            proc = subprocess.run(["make", "-C", HLS_DIR, "lib"], capture_output=True, text=True)
            if proc.returncode != 0:
                last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["(no output)"]
                raise HlsKernelError(f"hls_kernel: `make -C {HLS_DIR} lib` failed: {last[0]}")
    return LIB_PATH


def load_library() -> ctypes.CDLL:
    """The kernel library of this process (built on first use)."""
    global _lib, _config
    if _lib is not None:
        return _lib
    lib = ctypes.CDLL(build_library())
    hp, fp = ctypes.c_void_p, ctypes.c_void_p
    lib.inf2_attention.argtypes = [hp, hp, hp, hp, hp, fp, fp, fp, fp] + [ctypes.c_int] * 7
    lib.inf2_attention.restype = None
    lib.inf2_attention_scratch_floats.argtypes = [ctypes.c_int] * 4
    lib.inf2_attention_scratch_floats.restype = ctypes.c_long
    cfg = (ctypes.c_int * 6)()
    lib.inf2_attention_config(cfg)
    _config = dict(zip(("max_head_dim", "max_group", "block_tokens", "max_tail", "axi_bytes", "acc_slots"), cfg))
    _lib = lib
    return lib


def kernel_config() -> dict:
    """The kernel's compile-time config (AttnConfig in hls/include/inf2_attn/attn_config.h)."""
    load_library()
    return dict(_config)


def _as_array(x, dtype, name: str, ndim: int) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        if x.device.type != "cpu":
            raise HlsKernelError(f"hls_attention: {name} must be a CPU tensor, got device {x.device}")
        x = x.detach().to(_torch_dtype(dtype)).contiguous().numpy()
    a = np.ascontiguousarray(x, dtype=dtype)
    if a.ndim != ndim:
        raise HlsKernelError(f"hls_attention: {name} must have {ndim} dims, got shape {a.shape}")
    return a


def _torch_dtype(np_dtype):
    import torch

    return {np.float16: torch.float16, np.float32: torch.float32}[np_dtype]


def _ptr(a: Optional[np.ndarray]):
    return None if a is None else a.ctypes.data_as(ctypes.c_void_p)


def hls_attention(q, k, v, ctx_len: int, tail_mode: int = 0, tail_k=None, tail_v=None,
                  tail_scores=None) -> Tuple[object, object]:
    """Decode attention of q over k/v[:, :ctx_len] plus the write-back tail, on the C++ kernel.

    tail_mode 0: no tail; 1: tail_k and tail_v [rows, n_tail, d] join exactly; 2: tail_scores
    [rows, group, n_tail] (scaled) and tail_v. Returns (out [rows, group, d] fp32,
    lse [rows, group] fp32); see the module docstring for every shape."""
    lib = load_library()
    cfg = _config
    as_torch = hasattr(q, "detach")
    qa = _as_array(q, np.float16, "q", 3)
    ka = _as_array(k, np.float16, "k", 3)
    va = _as_array(v, np.float16, "v", 3)
    rows, group, d = qa.shape
    cap = ka.shape[1]
    if ka.shape != (rows, cap, d) or va.shape != ka.shape:
        raise HlsKernelError(f"hls_attention: k {ka.shape} and v {va.shape} must both be [rows={rows}, capacity, d={d}]")
    if not 0 <= ctx_len <= cap:
        raise HlsKernelError(f"hls_attention: ctx_len={ctx_len} must be in [0, capacity={cap}]")
    if not (1 <= d <= cfg["max_head_dim"] and 1 <= group <= cfg["max_group"]):
        raise HlsKernelError(f"hls_attention: head_dim={d} and group={group} must be in [1, {cfg['max_head_dim']}] "
                             f"and [1, {cfg['max_group']}]")
    if tail_mode not in (0, 1, 2):
        raise HlsKernelError(f"hls_attention: tail_mode={tail_mode!r} must be 0 (none), 1 (k/v) or 2 (scores + v)")
    tk = tv = ts = None
    n_tail = 0
    if tail_mode:
        if tail_v is None or (tail_mode == 1 and tail_k is None) or (tail_mode == 2 and tail_scores is None):
            need = "tail_k and tail_v" if tail_mode == 1 else "tail_scores and tail_v"
            raise HlsKernelError(f"hls_attention: tail_mode={tail_mode} needs {need}")
        tv = _as_array(tail_v, np.float16, "tail_v", 3)
        n_tail = tv.shape[1]
        if tv.shape != (rows, n_tail, d):
            raise HlsKernelError(f"hls_attention: tail_v {tv.shape} must be [rows={rows}, n_tail, d={d}]")
        if n_tail > cfg["max_tail"]:
            raise HlsKernelError(f"hls_attention: n_tail={n_tail} exceeds the kernel's max_tail={cfg['max_tail']}")
        if tail_mode == 1:
            tk = _as_array(tail_k, np.float16, "tail_k", 3)
            if tk.shape != tv.shape:
                raise HlsKernelError(f"hls_attention: tail_k {tk.shape} must match tail_v {tv.shape}")
        else:
            ts = _as_array(tail_scores, np.float32, "tail_scores", 3)
            if ts.shape != (rows, group, n_tail):
                raise HlsKernelError(f"hls_attention: tail_scores {ts.shape} must be [rows={rows}, group={group}, "
                                     f"n_tail={n_tail}]")
    out = np.empty((rows, group, d), dtype=np.float32)
    lse = np.empty((rows, group), dtype=np.float32)
    scratch = np.empty(max(1, lib.inf2_attention_scratch_floats(ctx_len, n_tail, group, tail_mode)), np.float32)
    if rows:
        lib.inf2_attention(_ptr(qa), _ptr(ka), _ptr(va), _ptr(tk), _ptr(tv), _ptr(ts), _ptr(scratch), _ptr(out),
                           _ptr(lse), rows, ctx_len, cap, n_tail, group, d, tail_mode)
    if as_torch:
        import torch

        return torch.from_numpy(out), torch.from_numpy(lse)
    return out, lse


def merge_attention(outs: Sequence, lses: Sequence) -> Tuple[np.ndarray, np.ndarray]:
    """Merge partial results over disjoint token sets exactly (numpy, fp64 internally).

    outs[i] [..., d], lses[i] [...] -> (out [..., d] fp32, lse [...] fp32) with
    lse = logsumexp_i(lse_i) and out = sum_i exp(lse_i - lse) * out_i. Empty parts (lse = -inf)
    contribute nothing."""
    o = np.stack([np.asarray(x, dtype=np.float64) for x in outs])  # [parts, ..., d]
    s = np.stack([np.asarray(x, dtype=np.float64) for x in lses])  # [parts, ...]
    m = s.max(axis=0)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    w = np.exp(s - m_safe)  # [parts, ...]; exp(-inf) = 0
    tot = w.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        lse = np.where(tot > 0, m_safe + np.log(tot), -np.inf)
        out = (w[..., None] * o).sum(axis=0) / np.where(tot > 0, tot, 1.0)[..., None]
    return out.astype(np.float32), lse.astype(np.float32)
