"""Page-locked landing buffers for a decode step's query rows and new K,V (the plan's `q_d2h`).

Made by `inf2hw.ops.OpRunner` on CUDA, before the clock. Used by `inf2hw.ops_io` in
`q_d2h`. Each step, the GPU's q, k, v rows of one (layer, micro-batch) go to the host for
CPU attention, the CSDs' queries and the host or drive store's new token.

A device-to-host copy into pageable memory of a few hundred KB costs about 0.35 ms on an
H100 host. `experiments/validation/profile_op.py` measured 60 `cudaMemcpyAsync` calls
taking 46.6 ms, 30-50x their bytes at the link's rate; the calibrated pageable rate is
taken on 64 MiB copies. Into page-locked memory the same copy is DMA at link speed. All
three copies are queued, and the host then waits once for the stream.

There is one slot per (layer, micro-batch, step parity). A step's rows are read by that
step's consumers: attention, CSD query sends, the host stores' new token. The plan has those
finish before the same (layer, micro-batch) comes round again two steps later. A drive
write of the new token, which the I/O pool may run later, takes its own copy
(`inf2hw.ops_io`, `kvw`).

Shapes: q [rows, G, 1, d]; k and v [rows, 1, d]. rows = micro-batch x KV heads, in the
store dtype.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from .stores import pinned_empty, pinned_fits


class HostQkvSlots:
    def __init__(self, num_layers: int, num_mbs: int, rows: int, group: int, head_dim: int, dtype: torch.dtype):
        n = num_layers * num_mbs * 2
        qs = pinned_empty(n, (rows, group, 1, head_dim), dtype)  # [rows, G, 1, d] each
        kvs = pinned_empty(2 * n, (rows, 1, head_dim), dtype)  # [rows, 1, d] each
        self.slots: Dict[Tuple[int, int, int], Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        i = 0
        for L in range(num_layers):
            for m in range(num_mbs):
                for parity in range(2):
                    self.slots[(L, m, parity)] = (qs[i], kvs[2 * i], kvs[2 * i + 1])
                    i += 1

    @staticmethod
    def make(num_layers: int, num_mbs: int, rows: int, group: int, head_dim: int,
             dtype: torch.dtype) -> Optional["HostQkvSlots"]:
        """The slots, or None when page-locked memory for them is not available (the engine
        then copies into pageable memory, as before)."""
        item = torch.empty((), dtype=dtype).element_size()
        need = num_layers * num_mbs * 2 * rows * head_dim * (group + 2) * item
        if not pinned_fits(need):
            return None
        try:
            return HostQkvSlots(num_layers, num_mbs, rows, group, head_dim, dtype)
        except RuntimeError:  # cudaHostAlloc failed: stay pageable
            return None

    def copy(self, L: int, m: int, step: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """GPU q [rows, G, 1, d], k, v [rows, 1, d] (any strides and dtype) -> this (L, m,
        step parity)'s pinned host rows, in the slots' dtype. Returns them once copied."""
        slots = self.slots[(L, m, step % 2)]
        for dst, src in zip(slots, (q, k, v)):
            dst.copy_(src, non_blocking=True)  # DMA; a dtype change runs on the GPU first
        torch.cuda.current_stream().synchronize()  # the host reads them next
        return slots
