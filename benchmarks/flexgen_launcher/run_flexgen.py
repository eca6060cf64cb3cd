"""One FlexGen 0.1.8 run, stock code, with a stand-in tokenizer and (without CUDA) CPU
redirections; writes FlexGen's own timings as JSON.

    python benchmarks/flexgen_launcher/run_flexgen.py --site DIR --json-out F.json -- \\
        --model facebook/opt-1.3b --path _DUMMY_ --percent 100 0 0 100 100 0 \\
        --gpu-batch-size 4 --num-gpu-batches 2 --prompt-len 512 --gen-len 8 --cpu-cache-compute --sep-layer 0

`--site` is where flexgen (and, if missing, attrs/tqdm) was installed with
`pip install --no-index --no-deps --target DIR`. Everything after `--` is FlexGen's own
command line (`flexgen.flex_opt.add_parser_arguments`). Run it under `timeout`.
The JSON holds FlexGen's per-step costs (`timers("generate").costs`: costs[0] is the
prefill) and the throughputs computed exactly as `run_flexgen` prints them
(prefill = batch * prompt / costs[0], decode = batch * (gen - 1) / sum(costs[1:]),
total = batch * gen / sum(costs)).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path


def main() -> None:
    argv = sys.argv[1:]
    ours, theirs = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--site", default="", help="folder flexgen was pip-installed into (--target)")
    ap.add_argument("--json-out", required=True)
    ap.add_argument("--fp16-on-cpu", action="store_true", help="keep fp16 without CUDA (very slow on most CPUs)")
    a = ap.parse_args(ours)
    if a.site:
        sys.path.insert(0, os.path.abspath(a.site))
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import torch

    from flexgen_launcher import tokenizer

    tokenizer.install()
    cuda = torch.cuda.is_available()
    if not cuda:
        from flexgen_launcher import cpu_shims

        cpu_shims.install(fp32=not a.fp16_on_cpu)
    from flexgen import flex_opt
    from flexgen.timer import timers

    parser = argparse.ArgumentParser()
    flex_opt.add_parser_arguments(parser)
    args = parser.parse_args(theirs)
    if args.log_file == "auto":
        args.log_file = os.devnull
    t0 = time.perf_counter()
    flex_opt.run_flexgen(args)
    wall = time.perf_counter() - t0
    costs = list(timers("generate").costs)
    batch = args.gpu_batch_size * args.num_gpu_batches
    prefill, decode = costs[0], sum(costs[1:])
    out = {
        "side": "flexgen",
        "flexgen_args": theirs,
        "device": torch.cuda.get_device_name(0) if cuda else f"cpu ({platform.processor() or platform.machine()}, "
                                                               f"{os.cpu_count()} cores, CUDA calls redirected)",
        "dtype": "fp16" if cuda or a.fp16_on_cpu else "fp32 (fp16 redirected to fp32 on CPU)",
        "torch": torch.__version__,
        "batch": batch, "prompt_len": args.prompt_len, "gen_len": args.gen_len,
        "costs_s": costs,
        "time_s": {"prefill": prefill, "decode": decode, "total": prefill + decode},
        "throughput": {"prefill_tok_s": batch * args.prompt_len / prefill,
                       "decode_tok_s": batch * (args.gen_len - 1) / decode if decode > 0 else 0.0,
                       "total_tok_s": batch * args.gen_len / (prefill + decode)},
        "wall_s": wall,
        "projected": bool(args.debug_mode or args.cut_gen_len),
    }
    Path(a.json_out).write_text(json.dumps(out, indent=2))
    print(f"flexgen: prefill {out['throughput']['prefill_tok_s']:.1f} tok/s  decode {out['throughput']['decode_tok_s']:.2f} "
          f"tok/s  total {out['throughput']['total_tok_s']:.2f} tok/s  ({wall:.1f} s wall)")


if __name__ == "__main__":
    main()
