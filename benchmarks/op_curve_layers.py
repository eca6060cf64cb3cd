"""How many layers' weights the calibration's dense op timings must rotate over.

    python benchmarks/op_curve_layers.py [--model opt-125m] [--layers 3,12] [--tokens 4]
    python benchmarks/op_curve_layers.py --head       # the LM head alone, then after a walk over the layers

Times the engine's `model.qkv` and `model.post` at one decode shape ([4 sequences x 1
token] by default), called as `inf2hw.calibrate_ops.model_ops` calls them (qkv, post, next
layer; `_alternating_s`, 1.8 s budget a point) over N copies of the model's layer, for each
N in --layers, on the host with 1 torch thread (fp32). Where the host's caches hold N
layers' weights the ops run faster than in the engine, whose step walks all of the model's
layers: on session 11's VM (480 MiB L3) opt-125m's `post` took 2.3 ms over 3 layers and 3.1
ms over its 12, where the engine measured 3.05 ms (BENCHMARKS.md, session 11). Also prints
the host's last-level cache (sysfs) and the rotation the calibration now uses. With --head:
`model.head` (and the argmax the engine takes) on --tokens sequences, timed alone and with
each call after qkv and post over the model's layers (as a decode step calls it, and as the
calibration now times it on a CPU). Units: ms.
"""
from __future__ import annotations

import argparse
import statistics
from dataclasses import replace

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="opt-125m")
    ap.add_argument("--layers", default="3,12")
    ap.add_argument("--tokens", type=int, default=4)
    ap.add_argument("--head", action="store_true")
    a = ap.parse_args()
    from inf2hw import model as M
    from inf2hw.calibrate_dense import host_llc_bytes, host_rotation_bytes
    from inf2hw.calibrate_ops import _alternating_s, _shape, layer_walk, load_model

    torch.set_num_threads(1)
    md = load_model(a.model, 4)
    print(f"LLC {host_llc_bytes() / 2**20:.0f} MiB, rotation {host_rotation_bytes() / 2**20:.0f} MiB, "
          f"{a.model} layer {md.layer_weight_bytes() / 1e6:.1f} MB fp32, {md.num_layers} layers")
    b, p = _shape(a.tokens)
    if a.head:
        return head(md, a.tokens)
    for n in [int(x) for x in a.layers.split(",")]:
        w = M.init_random(replace(md, num_layers=n), dtype=torch.float32, device="cpu")
        x = torch.randn(b, p, md.hidden)  # [b, p, hidden]
        with torch.inference_mode():
            ts = _alternating_s(layer_walk(md, w.layers, x, torch.float32), lambda: None, 0.6 * n)
        print(f"  over {n:3d} layers ({n * md.layer_weight_bytes() / 1e6:6.0f} MB): "
              f"qkv {statistics.median(ts[0::2]) * 1e3:.3f} ms, post {statistics.median(ts[1::2]) * 1e3:.3f} ms")
        w = None


def head(md, b: int) -> None:
    """The head alone, then after qkv and post over the model's layers (see the docstring)."""
    from inf2hw import model as M
    from inf2hw.calibrate_ops import _alternating_s, layer_walk

    w = M.init_random(md, dtype=torch.float32, device="cpu")
    x = torch.randn(b, 1, md.hidden)  # [b, 1, hidden]
    with torch.inference_mode():
        fn = lambda: M.head(w, x)[:, -1].float().argmax(-1)  # noqa: E731
        alone = _alternating_s([fn], lambda: None, 1.0)[0]
        after = _alternating_s([fn] + layer_walk(md, w.layers, x, torch.float32), lambda: None,
                               0.6 * md.num_layers)[0]
    print(f"  head on {b} sequences: alone {alone * 1e3:.2f} ms, after the walk over {md.num_layers} layers "
          f"{after * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
