"""How much this machine's speed varies from one repeat to the next at fixed work.

    python benchmarks/machine_noise.py --seconds 120 --threads 1

It times the one dense block that `inf2 calibrate` uses for the profile's dense rate: the
engine's `model.qkv` + `model.post` on a 1024-wide OPT layer with 1024 tokens, fp32, on the
CPU. The block is timed back to back for `--seconds`. No other work runs, the inputs do not
change, and the FLOPs are the same every time. Whatever spread remains is the machine's.

Prints one JSON object. `quantiles_ms` gives the 0/10/50/90/100 % times of one block.
`spread` is p90 / p10 - 1 and `cv` is stdev / mean. `windows` gives the median over each
consecutive tenth of the run (drift over time).

A validation bound is only meaningful well above this spread. Per-op MAPE <= 20 % and
end-to-end <= 10 % cannot be met reliably on a machine whose identical block varies by
that much.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the validation's engine uses 1 here)")
    ap.add_argument("--hidden", type=int, default=1024)
    a = ap.parse_args()
    from inf2hw.calibrate_dense import prefill_block

    torch.set_num_threads(a.threads)
    blk, _ = prefill_block("opt", a.hidden, a.hidden, "cpu", torch.float32)  # the calibration's own block
    ts, stamps = [], []
    with torch.inference_mode():
        blk()
        t_end = time.perf_counter() + a.seconds
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            blk()
            ts.append(time.perf_counter() - t0)
            stamps.append(t0)
    s = sorted(ts)
    q = lambda p: s[min(len(s) - 1, int(p * (len(s) - 1) + 0.5))] * 1e3  # noqa: E731
    n = len(ts)
    windows = [statistics.median(ts[i * n // 10:(i + 1) * n // 10]) * 1e3 for i in range(10) if (i + 1) * n // 10 > i * n // 10]
    print(json.dumps({"machine": f"{platform.machine()} {torch.get_num_threads()} thread(s), {platform.node()}",
                      "blocks": n, "seconds": round(stamps[-1] - stamps[0] + ts[-1], 1),
                      "quantiles_ms": [round(q(p), 1) for p in (0, 0.1, 0.5, 0.9, 1.0)],
                      "spread": round(q(0.9) / q(0.1) - 1, 3), "cv": round(statistics.pstdev(ts) / statistics.mean(ts), 3),
                      "windows_ms": [round(w, 1) for w in windows]}, indent=1))


if __name__ == "__main__":
    main()
