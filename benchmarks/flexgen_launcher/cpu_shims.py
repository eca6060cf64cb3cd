"""Redirect stock FlexGen 0.1.8's CUDA-only calls to the CPU (a machine without CUDA).

What FlexGen needs from CUDA, and what it gets here instead:
  * `TorchDevice("cuda:0")`, its "GPU", becomes a device of type CUDA whose tensors live
    on the CPU, so FlexGen's placement logic (weights/cache/activations on GPU, CPU,
    disk; copies between them; `--cpu-cache-compute`) runs unchanged;
  * `torch.cuda.Stream`, `torch.cuda.stream`, `synchronize`, `set_device`, memory stats
    become no-ops; `Tensor.cuda()` returns the tensor; `pin_memory` is dropped (a CPU-only
    PyTorch has no pinned allocator and refuses `pin_memory=True`);
  * fp16 -> fp32: FlexGen hard-codes fp16 weights, cache and `.half()` casts, and a CPU
    without fp16 arithmetic runs fp16 GEMMs hundreds of times slower than fp32 (measured
    on the dev VM, an AMD EPYC without AVX512-FP16: 0.27 vs 48 GFLOP/s), so every fp16
    allocation is made fp32 and `.half()` returns fp32. The inf2 engine is run in fp32 on
    the CPU as well, so both sides do the same arithmetic.
Call `install()` before importing `flexgen.flex_opt`.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch


class _Stream:
    def __init__(self, *a, **k):
        pass

    def synchronize(self):
        pass

    def wait_stream(self, *a, **k):
        pass


def install(fp32: bool = True) -> None:
    torch.cuda.Stream = _Stream
    torch.cuda.stream = lambda *a, **k: contextlib.nullcontext()
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.set_device = lambda *a, **k: None
    torch.cuda.memory_allocated = lambda *a, **k: 0
    torch.cuda.max_memory_allocated = lambda *a, **k: 0
    torch.cuda.empty_cache = lambda *a, **k: None
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.Tensor.pin_memory = lambda self, *a, **k: self
    empty = torch.empty

    def empty_unpinned(*a, **k):
        k.pop("pin_memory", None)
        return empty(*a, **k)

    torch.empty = empty_unpinned
    if fp32:
        torch.Tensor.half = lambda self, *a, **k: self.float()

    from flexgen import pytorch_backend as pb

    dev_init = pb.TorchDevice.__init__

    def device_init(self, name, *a, **k):
        if not str(name).startswith("cuda"):
            return dev_init(self, name, *a, **k)
        saved = pb.global_cpu_device
        dev_init(self, "cpu", *a, **k)
        self.name, self.device_type = name, pb.DeviceType.CUDA
        pb.global_cpu_device = saved

    pb.TorchDevice.__init__ = device_init
    if fp32:
        for cls in (pb.TorchDevice, pb.TorchDisk):
            alloc = cls.allocate

            def allocate(self, shape, dtype, *a, _alloc=alloc, **k):
                return _alloc(self, shape, np.float32 if dtype == np.float16 else dtype, *a, **k)

            cls.allocate = allocate
