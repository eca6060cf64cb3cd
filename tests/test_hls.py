"""The HLS decode-attention kernel, built with g++: the golden-vector C simulation, the ctypes
wrapper (inf2hw.csd.hls_kernel) against a torch fp32 reference, exact LSE merging of partial
results, use from another process, and the cycle model (inf2sim.accel) against the C++ loop trip
counts. Skipped only when g++ is absent."""
from __future__ import annotations

import ctypes
import importlib.util
import math
import os
import shutil
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
import multiprocessing

import numpy as np
import pytest

if shutil.which("g++") is None:
    pytest.skip("g++ not found: the HLS kernel cannot be built", allow_module_level=True)

import torch  # noqa: E402

from inf2hw.csd import hls_kernel  # noqa: E402
from inf2hw.csd.hls_kernel import HlsKernelError, hls_attention, merge_attention  # noqa: E402
from inf2sim import accel  # noqa: E402

HLS = os.path.join(os.path.dirname(__file__), "..", "hls")
TOL = 2e-3  # fp16-level, relative to the output scale (as in hls/tb/tb_attention.cpp)

_spec = importlib.util.spec_from_file_location("hls_gen_golden", os.path.join(HLS, "scripts", "gen_golden.py"))
gen_golden = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = gen_golden  # dataclasses look their module up there
_spec.loader.exec_module(gen_golden)
reference_attention = gen_golden.reference_attention


def _inputs(rows, group, d, cap, n_tail=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(rows, group, d, generator=g).half()
    k = torch.randn(rows, cap, d, generator=g).half()
    v = torch.randn(rows, cap, d, generator=g).half()
    tk = torch.randn(rows, n_tail, d, generator=g).half()
    tv = torch.randn(rows, n_tail, d, generator=g).half()
    return q, k, v, tk, tv


def _assert_close(out, lse, ref_out, ref_lse):
    out, lse = torch.as_tensor(out), torch.as_tensor(lse)
    scale = max(float(ref_out.abs().max()), 1e-3)
    assert float((out - ref_out).abs().max()) <= TOL * scale
    assert float((lse - ref_lse).abs().max()) <= TOL * max(1.0, float(ref_lse.abs().max()))


def test_csim_golden_testbench_passes():
    proc = subprocess.run(["make", "-C", HLS, "csim"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "PASS (" in proc.stdout and "MISMATCH" not in proc.stdout


def test_kernel_config_matches_the_cycle_model():
    cfg = hls_kernel.kernel_config()
    k = accel.KERNEL
    assert (cfg["max_head_dim"], cfg["max_group"], cfg["max_tail"], cfg["axi_bytes"], cfg["acc_slots"]) == (
        k.max_head_dim, k.max_group, k.max_tail, k.axi_bytes, k.acc_slots)
    assert cfg["block_tokens"] == 128


@pytest.mark.parametrize("rows,group,d,ctx,cap,tail_mode,n_tail", [
    (3, 1, 128, 300, 320, 0, 0),    # MHA, ctx not a multiple of 128
    (2, 5, 128, 1000, 1024, 1, 1),  # GQA group 5 (Qwen2.5-32B), v1 tail of one token
    (2, 8, 64, 257, 300, 2, 16),    # GQA group 8, v2 tail of a full c=16 page
    (1, 4, 80, 128, 128, 1, 7),     # exactly one block, head_dim not a multiple of 32
])
def test_matches_torch_reference(rows, group, d, ctx, cap, tail_mode, n_tail):
    q, k, v, tk, tv = _inputs(rows, group, d, cap, n_tail, seed=rows * 100 + group)
    k[:, ctx:] = float("nan")  # capacity past ctx_len must never be read
    v[:, ctx:] = float("nan")
    ts = torch.einsum("rgd,rtd->rgt", q.float(), tk.float()) / math.sqrt(d)
    kw = dict(tail_k=tk, tail_v=tv) if tail_mode == 1 else dict(tail_scores=ts, tail_v=tv) if tail_mode == 2 else {}
    out, lse = hls_attention(q, k, v, ctx, tail_mode=tail_mode, **kw)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (rows, group, d)
    assert lse.shape == (rows, group)
    ref_out, ref_lse = reference_attention(q, k, v, ctx, tail_mode, tk, tv, ts)
    _assert_close(out, lse, ref_out, ref_lse)


def test_v1_and_v2_tails_agree():
    """Shipping tail k (v1) or host-computed tail scores (v2) gives the same attention."""
    q, k, v, tk, tv = _inputs(2, 5, 128, 200, n_tail=9, seed=7)
    ts = torch.einsum("rgd,rtd->rgt", q.float(), tk.float()) / math.sqrt(128)
    o1, l1 = hls_attention(q, k, v, 200, tail_mode=1, tail_k=tk, tail_v=tv)
    o2, l2 = hls_attention(q, k, v, 200, tail_mode=2, tail_scores=ts, tail_v=tv)
    assert float((o1 - o2).abs().max()) < 1e-5 and float((l1 - l2).abs().max()) < 1e-5


def test_lse_merge_of_two_sequence_halves_equals_full_attention():
    q, k, v, tk, tv = _inputs(3, 5, 128, 700, n_tail=3, seed=11)
    qn, kn, vn, tkn, tvn = (x.numpy() for x in (q, k, v, tk, tv))
    full_o, full_l = hls_attention(qn, kn, vn, 700, tail_mode=1, tail_k=tkn, tail_v=tvn)
    # Half A: tokens [0, 300) in place; half B: tokens [300, 700) copied to their own buffer, plus the tail.
    oa, la = hls_attention(qn, kn, vn, 300)
    ob, lb = hls_attention(qn, kn[:, 300:], vn[:, 300:], 400, tail_mode=1, tail_k=tkn, tail_v=tvn)
    assert isinstance(oa, np.ndarray)
    mo, ml = merge_attention([oa, ob], [la, lb])
    assert np.abs(mo - full_o).max() < 1e-5 and np.abs(ml - full_l).max() < 1e-5
    # An empty part (lse = -inf, out = 0) merges as nothing.
    oe, le = hls_attention(qn, kn, vn, 0)
    assert np.all(oe == 0) and np.all(np.isneginf(le))
    mo2, ml2 = merge_attention([mo, oe], [ml, le])
    assert np.abs(mo2 - full_o).max() < 1e-5 and np.abs(ml2 - full_l).max() < 1e-5


def test_bad_arguments_are_one_line_errors():
    q, k, v, tk, tv = _inputs(1, 1, 128, 16, n_tail=2)
    with pytest.raises(HlsKernelError, match="ctx_len"):
        hls_attention(q, k, v, 17)
    with pytest.raises(HlsKernelError, match="tail_mode=1 needs"):
        hls_attention(q, k, v, 16, tail_mode=1, tail_v=tv)
    with pytest.raises(HlsKernelError, match="group"):
        hls_attention(torch.zeros(1, 9, 128).half(), k, v, 16)


def test_usable_from_another_process():
    q, k, v, _, _ = _inputs(2, 2, 64, 150, seed=5)
    qn, kn, vn = q.numpy(), k.numpy(), v.numpy()
    here = hls_attention(qn, kn, vn, 150)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        there = pool.submit(hls_attention, qn, kn, vn, 150).result(timeout=60)
    assert np.array_equal(here[0], there[0]) and np.array_equal(here[1], there[1])


def test_cycle_model_trips_equal_the_cpp_loop_trips():
    """inf2sim.accel.loop_trips must count exactly the iterations the C++ loops run."""
    proc = subprocess.run(["make", "-C", HLS, "trips"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lib = ctypes.CDLL(os.path.join(HLS, "build", "libinf2attn_trips.so"))
    lib.inf2_trip_count.restype = ctypes.c_long
    lib.inf2_trip_count.argtypes = [ctypes.c_char_p]
    lib.inf2_attention.argtypes = [ctypes.c_void_p] * 9 + [ctypes.c_int] * 7
    ptr = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
    for rows, ctx, n_tail, group, d, mode in [(2, 300, 0, 1, 128, 0), (1, 1000, 1, 5, 128, 1),
                                              (2, 129, 15, 8, 64, 2), (1, 0, 5, 3, 80, 1)]:
        q = np.zeros((rows, group, d), np.float16)
        kv = np.zeros((rows, max(ctx, 1), d), np.float16)
        tail = np.zeros((rows, max(n_tail, 1), d), np.float16)
        ts = np.zeros((rows, group, max(n_tail, 1)), np.float32)
        scratch = np.zeros((ctx // 128 + 2) * group * 128, np.float32)
        out, lse = np.zeros((rows, group, d), np.float32), np.zeros((rows, group), np.float32)
        lib.inf2_trip_reset()
        lib.inf2_attention(ptr(q), ptr(kv), ptr(kv), ptr(tail), ptr(tail), ptr(ts), ptr(scratch), ptr(out), ptr(lse),
                           rows, ctx, max(ctx, 1), n_tail, group, d, mode)
        model = accel.loop_trips(ctx, d, group, n_tail, macs=128, block_tokens=128, tail_mode=mode)
        for stage, labels in accel.LOOP_TERMS.items():
            for label in labels:
                assert lib.inf2_trip_count(label.encode()) == rows * model[stage][label], (label, rows, ctx, mode)
