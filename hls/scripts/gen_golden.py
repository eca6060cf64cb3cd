"""Golden vectors for the HLS decode-attention testbench (hls/tb/tb_attention.cpp).

Called by `make -C hls csim` (target `golden`) before the testbench runs, and imported by
tests/test_hls.py for `reference_attention`, the torch fp32 reference both use. For each case it
draws random fp16 q/k/v (plus the write-back tail), computes the expected output and log-sum-exp
with torch in fp32, and writes raw little-endian binaries into `<out>/<case>/`:

    q.f16        [n_rows, group, head_dim]             fp16
    k.f16, v.f16 [n_rows, row_stride_tokens, head_dim] fp16  (tokens >= ctx_len are NaN: never read)
    tail_k.f16   [n_rows, n_tail, head_dim]            fp16  tail_mode 1
    tail_v.f16   [n_rows, n_tail, head_dim]            fp16  tail_mode 1, 2
    tail_scores.f32 [n_rows, group, n_tail]            fp32  tail_mode 2 (q.k_tail / sqrt(head_dim))
    out.f32      [n_rows, group, head_dim]             fp32  expected output
    lse.f32      [n_rows, group]                       fp32  expected natural-log LSE of scaled scores

plus `<out>/manifest.txt`, one case per line:
    name n_rows ctx_len row_stride_tokens n_tail group head_dim tail_mode
Deterministic: each case seeds its own generator.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import torch


@dataclass(frozen=True)
class Case:
    name: str
    n_rows: int
    ctx_len: int
    row_stride_tokens: int
    n_tail: int
    group: int
    head_dim: int
    tail_mode: int  # 0 none, 1 = v1 tail k/v, 2 = v2 tail scores + v
    seed: int = 0
    k_ramp: float = 0.0  # > 0: scale K up along the context so the running max moves block to block


CASES = (
    Case("mha_d128_ctx300", 3, 300, 384, 0, 1, 128, 0, seed=1),
    Case("gqa5_d128_ctx1000_v1", 2, 1000, 1024, 1, 5, 128, 1, seed=2),
    Case("gqa8_d64_ctx129_v2", 2, 129, 200, 15, 8, 64, 2, seed=3),
    Case("gqa4_d80_ctx128_v1", 2, 128, 128, 3, 4, 80, 1, seed=4),
    Case("gqa8_d128_ctx2047_v2", 1, 2047, 2048, 16, 8, 128, 2, seed=5),
    Case("ramp_g2_d128_ctx700_v1", 2, 700, 768, 2, 2, 128, 1, seed=6, k_ramp=4.0),
    Case("tail_only_g3_d64_v1", 2, 0, 16, 5, 3, 64, 1, seed=7),
    Case("ctx1_g3_d32", 3, 1, 8, 0, 3, 32, 0, seed=8),
)


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx_len: int, tail_mode: int = 0,
                        tail_k: Optional[torch.Tensor] = None, tail_v: Optional[torch.Tensor] = None,
                        tail_scores: Optional[torch.Tensor] = None):
    """fp32 decode attention of q against the first ctx_len tokens of k/v plus the tail.

    q [rows, group, d], k/v [rows, capacity, d], tail_k/tail_v [rows, n_tail, d],
    tail_scores [rows, group, n_tail] (already scaled). Returns (out [rows, group, d] fp32,
    lse [rows, group] fp32, natural log of sum exp of the scaled scores)."""
    qf = q.float()
    scale = 1.0 / math.sqrt(q.shape[-1])
    keys = k[:, :ctx_len].float()  # [rows, ctx, d]
    vals = v[:, :ctx_len].float()
    s = torch.einsum("rgd,rtd->rgt", qf, keys) * scale  # [rows, group, ctx]
    if tail_mode == 1:
        s = torch.cat([s, torch.einsum("rgd,rtd->rgt", qf, tail_k.float()) * scale], dim=-1)
    elif tail_mode == 2:
        s = torch.cat([s, tail_scores.float()], dim=-1)
    if tail_mode in (1, 2):
        vals = torch.cat([vals, tail_v.float()], dim=1)
    lse = torch.logsumexp(s, dim=-1)  # [rows, group]; -inf for an empty row
    p = torch.exp(s - lse[..., None]) if s.shape[-1] else s
    out = torch.einsum("rgt,rtd->rgd", p, vals)
    return out, lse


def make_inputs(case: Case) -> Dict[str, torch.Tensor]:
    """Random fp16 inputs for one case (q, k, v and the tail tensors its tail_mode uses)."""
    gen = torch.Generator().manual_seed(1000 + case.seed)
    r, g, d, n = case.n_rows, case.group, case.head_dim, case.n_tail
    q = torch.randn(r, g, d, generator=gen)
    k = torch.randn(r, case.row_stride_tokens, d, generator=gen)
    v = torch.randn(r, case.row_stride_tokens, d, generator=gen)
    if case.k_ramp > 0 and case.ctx_len > 0:
        k[:, : case.ctx_len] *= torch.linspace(1.0, case.k_ramp, case.ctx_len)[None, :, None]
    # Capacity past ctx_len is poison: the kernel must never read it.
    k[:, case.ctx_len:] = float("nan")
    v[:, case.ctx_len:] = float("nan")
    x = {"q": q.half(), "k": k.half(), "v": v.half()}
    if case.tail_mode in (1, 2):
        x["tail_k"] = torch.randn(r, n, d, generator=gen).half()
        x["tail_v"] = torch.randn(r, n, d, generator=gen).half()
    if case.tail_mode == 2:
        # What the host CPU ships in v2: scaled scores of the buffered keys, computed in fp32.
        x["tail_scores"] = torch.einsum("rgd,rtd->rgt", x["q"].float(), x.pop("tail_k").float()) / math.sqrt(d)
    return x


def write_case(case: Case, out_dir: str) -> None:
    x = make_inputs(case)
    out, lse = reference_attention(x["q"], x["k"], x["v"], case.ctx_len, case.tail_mode, x.get("tail_k"),
                                   x.get("tail_v"), x.get("tail_scores"))
    d = os.path.join(out_dir, case.name)
    os.makedirs(d, exist_ok=True)
    files = dict(x, out=out, lse=lse)
    for key, t in files.items():
        ext = "f16" if t.dtype == torch.float16 else "f32"
        np.ascontiguousarray(t.numpy()).astype("<" + ("f2" if ext == "f16" else "f4")).tofile(
            os.path.join(d, f"{key}.{ext}"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "build", "golden"))
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    lines = ["# name n_rows ctx_len row_stride_tokens n_tail group head_dim tail_mode"]
    for c in CASES:
        write_case(c, args.out)
        lines.append(f"{c.name} {c.n_rows} {c.ctx_len} {c.row_stride_tokens} {c.n_tail} {c.group} {c.head_dim} "
                     f"{c.tail_mode}")
    with open(os.path.join(args.out, "manifest.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"gen_golden: wrote {len(CASES)} cases to {os.path.normpath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
