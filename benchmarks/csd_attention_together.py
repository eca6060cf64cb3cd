"""Emulated CSDs attending at once against one attending alone (the calibration's case).

    python benchmarks/csd_attention_together.py --csds 4 --rows 320 --ctx 512,1536 --dtype fp16

`inf2 calibrate` times one emulated CSD's attend (`inf2hw.calibrate_csd.measure_csd`) with
the torch threads the engine gives each CSD (`inf2hw.run.csd_threads_for`: its share of the
cores). In an `ans` decode step every CSD attends over its rows at about the same time, on
the same host's cores and memory. `inf2hw.calibrate_csd.measure_together` (what a GPU
host's calibration now records as `csd.attend_together`) starts `--csds` of the engine's
workers, stores `--rows` rows of K,V per CSD, and per context length times the attends
(worker-side stamps, medians of `--repeat`): CSD 0 alone, then all at once. Prints one
JSON object: ms per attend and the ratio together / alone.
"""
from __future__ import annotations

import argparse
import json
import shutil

from inf2hw.calibrate_csd import measure_together
from inf2hw.run import EngineOptions, csd_threads_for


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/tmp/inf2-csd-together")
    ap.add_argument("--csds", type=int, default=4)
    ap.add_argument("--rows", type=int, default=320, help="K,V rows per CSD (OPT-13B, batch 32, 4 CSDs: 320)")
    ap.add_argument("--ctx", default="512,1536")
    ap.add_argument("--dtype", default="fp16", choices=("fp16", "bf16", "fp32"))
    ap.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: the engine's share)")
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    ctxs = [int(x) for x in a.ctx.split(",")]
    threads = a.threads or csd_threads_for(EngineOptions(), a.csds)
    out = {"csds": a.csds, "rows": a.rows, "dtype": a.dtype, "threads_per_csd": threads}
    try:
        alone, together = measure_together(a.dir, a.dtype, 128, a.rows, ctxs, a.csds, threads, a.repeat)
    finally:
        shutil.rmtree(a.dir, ignore_errors=True)
    for n, x, y in zip(ctxs, alone, together):
        out[f"ctx{n}"] = {"kv_MB": round(2 * a.rows * n * 128 * (4 if a.dtype == "fp32" else 2) / 1e6, 1),
                          "alone_ms": round(x * 1e3, 2), "together_ms": round(y * 1e3, 2), "ratio": round(y / x, 3)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
