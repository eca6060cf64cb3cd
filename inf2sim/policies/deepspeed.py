"""DeepSpeed ZeRO-Inference-like baseline: weights and the KV cache in pinned host
DRAM, everything computed on the GPU. Called through the registry by
`inf2sim.scheduler.build_plan` (policy name `deepspeed`); docs/deepspeed.md says
what is and is not modelled.

Per layer and micro-batch the plan is the FlexGen zig-zag of `PlanBuilder` (the
layer's weights streamed host -> GPU into one of two buffers, prefetched while the
previous layer computes; `policy.weights` fractions apply) with:

  prefill   the prompt's K,V copied GPU -> host DRAM (`kvstore`, as FlexGen(DRAM));
  decode    the whole stored history of the micro-batch copied host -> GPU
            (`kv_h2d`: rows * (ctx - 1) * 2 * head_dim * dtype_bytes bytes, i.e.
            4*s*h per sequence per layer for fp16 MHA, s = ctx - 1), attention on
            the GPU over history + the new token, and the new token's K,V copied
            back GPU -> host (`kv_d2h`, 4*h per sequence per layer).

There is no CPU attention and no disk. The history copy lands in one of two GPU
KV buffers: a copy waits for the attention that last used its buffer and for the
previous step's `kv_d2h` of the same layer and micro-batch (the host copy must be
complete before it is read back). DS+UVM (unified memory) is approximated by the
same data movement. Bytes, FLOP and tokens as in `inf2sim.plan`.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

from ..plan import Attention, Transfer
from ..registry import register_policy
from ..scheduler import StepOps
from .flexgen import FlexGenBuilder

GPU_KV_SLOTS = 2  # double buffering of the per-layer KV history on the GPU


@register_policy("deepspeed")
class DeepSpeed(FlexGenBuilder):
    """KV in host DRAM, streamed to the GPU every step; GPU attention; `oom` when the
    KV cache (plus host-resident weights) does not fit host memory."""

    kv_on, attention_on = "host", "gpu"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.buffers.slots = GPU_KV_SLOTS

    def history_bytes(self, step: int) -> int:
        """Bytes of the history copied host -> GPU per layer per micro-batch at decode `step`."""
        return self._rows_kv_bytes(self.work.prompt_len + step - 1, self.layout.rows_total)

    def decode_attention(self, b: StepOps, L: int, m: int, qkv: str) -> List[str]:
        md, rows, s = self.model, self.layout.rows_total, b.step
        ctx = self.work.prompt_len + s
        # the host copy of this layer's cache is complete once last step's new K,V landed
        prev_store = b.name(L, m, "kv_d2h", step=s - 1) if s > 1 else b.name(L, m, "kvstore", step=0)
        buf = self.buffers.wait_for("gpu")
        h2d = b.add(Transfer, L, m, "kv_h2d", "kv", [buf, prev_store], src="dram", dst="gpu",
                    nbytes=self.history_bytes(s), rows=(0, rows), tokens=(0, ctx - 1))
        att = b.add(Attention, L, m, "attn", "attn_out", [qkv, h2d], device="gpu", rows=(0, rows),
                    tokens=(0, ctx), stored_len=ctx - 1, q_len=1, group=md.group_size, head_dim=md.head_dim,
                    flops=4.0 * rows * md.group_size * ctx * md.head_dim, kv_bytes=self._rows_kv_bytes(ctx, rows))
        self.buffers.used_by("gpu", att)
        b.add(Transfer, L, m, "kv_d2h", "kv_new", [qkv], src="gpu", dst="dram",
              nbytes=self._rows_kv_bytes(1, rows), rows=(0, rows), tokens=(ctx - 1, ctx))
        return [att]

    def memory_needs(self) -> Dict[str, Tuple[float, float]]:
        """Host: weights off the GPU + the whole KV cache. GPU: the base needs + the two
        KV history buffers of one layer and micro-batch at full length."""
        seq = self.work.prompt_len + self.work.gen_len
        gpu_bufs = GPU_KV_SLOTS * self._rows_kv_bytes(seq, self.layout.rows_total)
        return self._base_memory_needs(kv_gpu=float(gpu_bufs), kv_host=self.kv_bytes_total())
