"""The least time any engine can spend on a prompt's dense work on this machine.

    python benchmarks/prefill_roof.py --model opt-1.3b --gbs 2 --ngb 2 --prompt 2048 --threads 2

For one (layer, micro-batch) of the prompt it times, with torch on this CPU (or GPU), only
the work every engine must do at this shape and nothing else: the four projections of an
OPT / LLaMA layer as single GEMMs (QKV fused, the best case), the output projection, the FFN's
GEMMs, and torch's fused causal attention (SDPA). No LayerNorm, residuals, I/O or dispatch.
Medians of `--repeat`, scaled by layers x micro-batches. FlexGen and the inf2 engine call
these same kernels, so the engine's prefill time cannot fall below this sum. The total
throughput of a run cannot then exceed batch x gen / (this + its decode). `--flexgen-total-s`
turns that into the most any engine can reach against that FlexGen time.

Units: seconds, GFLOP/s. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="opt-1.3b", help="a conf/model name")
    ap.add_argument("--gbs", type=int, default=2, help="sequences per micro-batch")
    ap.add_argument("--ngb", type=int, default=2, help="micro-batches")
    ap.add_argument("--prompt", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--flexgen-total-s", type=float, default=0.0,
                    help="a measured FlexGen run's total seconds at this shape (for the ceiling ratio)")
    ap.add_argument("--decode-s", type=float, default=0.0, help="decode seconds to add to the ceiling's total")
    a = ap.parse_args()
    from inf2hw.calibrate_dense import _time_s  # median of `repeat` timed calls
    from inf2sim.config import default_config, specs_from_config

    if a.threads:
        torch.set_num_threads(a.threads)
    md = specs_from_config(default_config(model=a.model)).model
    dev, dt = a.device, DTYPES[a.dtype]
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    t, h, f = a.gbs * a.prompt, md.hidden, md.ffn_dim
    qkv_out = md.q_dim + 2 * md.kv_dim
    g = torch.Generator(device=dev).manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, device=dev).to(dt)  # noqa: E731
    x, y = r(t, h), r(t, f)  # [tokens, hidden], [tokens, ffn]
    w_qkv, w_o = r(qkv_out, h), r(h, md.q_dim)
    ffn = [r(f, h), r(h, f)] if md.family == "opt" else [r(2 * f, h), r(h, f)]  # SwiGLU: gate+up fused
    q = r(a.gbs, md.num_heads, a.prompt, md.head_dim)  # [b, heads, P, d]
    kv = r(a.gbs, md.num_heads, a.prompt, md.head_dim)  # GQA expanded: the kernel's work
    parts = {
        "qkv": (lambda: F.linear(x, w_qkv), 2 * t * h * qkv_out),
        "out": (lambda: F.linear(x, w_o), 2 * t * md.q_dim * h),
        "ffn_in": (lambda: F.linear(x, ffn[0]), 2 * t * h * ffn[0].shape[0]),
        "ffn_out": (lambda: F.linear(y, ffn[1]), 2 * t * f * h),
        "attention": (lambda: F.scaled_dot_product_attention(q, kv, kv, is_causal=True),
                      2 * 2 * a.gbs * md.num_heads * a.prompt * a.prompt * md.head_dim // 2),
    }
    with torch.inference_mode():
        secs = {k: _time_s(fn, a.repeat, sync) for k, (fn, _) in parts.items()}
    per = sum(secs.values())
    n = md.num_layers * a.ngb
    res = {"model": a.model, "shape": f"{a.gbs}x{a.ngb}, prompt {a.prompt}", "device": dev, "dtype": a.dtype,
           "threads": torch.get_num_threads(),
           "per_layer_mb_s": {k: round(v, 4) for k, v in secs.items()},
           "gflops": {k: round(parts[k][1] / v / 1e9, 1) for k, v in secs.items()},
           "prefill_roof_s": per * n}
    if a.flexgen_total_s > 0:
        res["ceiling_vs_flexgen"] = a.flexgen_total_s / (per * n + a.decode_s)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
