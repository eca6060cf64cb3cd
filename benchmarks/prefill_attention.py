"""The prompt's causal attention three ways, side by side in one process: the engine's
`inf2hw.model.prefill_attention` (torch's fused scaled_dot_product_attention), the
materialised fp32 reference `inf2hw.attention.attend_heads` (what the engine ran on a CPU
before session 5), and FlexGen 0.1.8's prefill (`TorchDevice.mha`: bmm, where, softmax, bmm).

    python benchmarks/prefill_attention.py --batch 4 --heads 12 --prompt 2048 --d 64 --dtype fp32

Defaults: one (layer, micro-batch) of OPT-125M at 4 sequences x prompt 2048. Prints one JSON
line per kernel: best-of-`repeat` seconds and the max abs difference from the reference.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from inf2hw import attention as A
from inf2hw import model as M

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def flexgen_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """FlexGen's prefill attention: q, k, v [b, h, P, d] -> [b, h, P, d] (scores materialised)."""
    b, h, p, d = q.shape
    qq = (q * d ** -0.5).reshape(b * h, p, d)
    w = torch.bmm(qq, k.reshape(b * h, p, d).transpose(1, 2))  # [b*h, P, P]
    idx = torch.arange(p, device=q.device)
    w = torch.where((idx <= idx.view(p, 1)).view(1, p, p), w, -1e4)
    return torch.bmm(F.softmax(w, dim=2), v.reshape(b * h, p, d)).view(b, h, p, d)


def best_s(fn, repeat: int) -> float:
    fn()  # warm
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--prompt", type=int, default=2048)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    torch.manual_seed(0)
    dt = DTYPES[a.dtype]
    q, k, v = (torch.randn(a.batch, a.heads, a.prompt, a.d).to(dt) for _ in range(3))  # [b, h, P, d]
    ref = A.attend_heads(q, k, v, causal=True)  # fp32 [b, h, P, d]
    kernels = {
        "engine (model.prefill_attention: fused SDPA)": lambda: M.prefill_attention(q, k, v),
        "reference (attention.attend_heads: fp32 scores)": lambda: A.attend_heads(q, k, v, causal=True),
        "FlexGen 0.1.8 (bmm, where, softmax, bmm)": lambda: flexgen_prefill(q, k, v),
    }
    shape = dict(batch=a.batch, heads=a.heads, prompt=a.prompt, d=a.d, dtype=a.dtype, threads=torch.get_num_threads())
    for name, fn in kernels.items():
        err = (fn().float() - ref).abs().max().item()
        print(json.dumps(dict(kernel=name, seconds=round(best_s(fn, a.repeat), 4), max_abs_diff=err, **shape)))


if __name__ == "__main__":
    main()
