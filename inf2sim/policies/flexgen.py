"""FlexGen-style baselines: the KV cache in GPU memory, host DRAM, or on disks read
back through the host, attention on the CPU where the cache lives (or the GPU for
GPU-resident KV). Called through the registry by `inf2sim.scheduler.build_plan`.

Policies: flexgen_ssd (conventional SSDs, RAID0), flexgen_csd (the SmartSSDs used
as plain SSDs, RAID0), flexgen_dram, flexgen_gpu. FlexGen stores a layer's cache as
one token-major tensor, so a decode read of one micro-batch is one large request
per drive (striped with the RAID chunk, `policy.params.raid_chunk_kib`, default
512 KiB = the mdadm default chunk).
"""
from __future__ import annotations

from typing import Dict, List, Tuple

from ..plan import Attention, Transfer
from ..registry import register_policy
from ..scheduler import PlanBuilder, StepOps


class KvBuffers:
    """A ring of host KV buffers: a read into a buffer waits for the attention that
    last used it (`slots` buffers). Keyed per resource so each drive set has its own."""

    def __init__(self, slots: int = 2):
        self.slots = slots
        self.users: Dict[str, List[str]] = {}

    def wait_for(self, key: str) -> str:
        u = self.users.get(key, [])
        return u[-self.slots] if len(u) >= self.slots else ""

    def used_by(self, key: str, op: str) -> None:
        u = self.users.setdefault(key, [])
        u.append(op)
        del u[: -self.slots]


class FlexGenBuilder(PlanBuilder):
    """KV where `policy.kv_on` says; decode attention on the CPU (or GPU for kv_on=gpu)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.buffers = KvBuffers(2)

    def disks(self) -> List[str]:
        if self.kv_on == "ssd":
            return [f"ssd{i}" for i in range(self.hw.ssd_count)]
        if self.kv_on == "csd":
            return [f"csd{i}.ssd" for i in range(self.hw.csd_count)]
        return []

    def chunk_bytes(self) -> int:
        return int(self.policy.params.get("raid_chunk_kib", 512)) * 1024

    def _rows_kv_bytes(self, tokens: int, rows: int) -> int:
        return rows * tokens * 2 * self.model.head_dim * self.dt

    # ---------------------------------------------------------------- prefill
    def prefill_store(self, b: StepOps, L: int, m: int, qkv: str) -> List[str]:
        if self.kv_on == "gpu":
            return []
        nbytes = self._rows_kv_bytes(self.work.prompt_len, self.layout.rows_total)
        down = b.add(Transfer, L, m, "kvstore", "kv", [b.name(L, m, "attn")], src="gpu", dst="dram", nbytes=nbytes)
        out = [down]
        disks = self.disks()
        for i, d in enumerate(disks):
            out.append(b.add(Transfer, L, m, f"kvstore{i}", "kv", [down], src="dram", dst=d,
                             nbytes=nbytes // len(disks), req_bytes=min(self.chunk_bytes(), nbytes // len(disks))))
        return out

    # ----------------------------------------------------------------- decode
    def decode_attention(self, b: StepOps, L: int, m: int, qkv: str) -> List[str]:
        md, lay = self.model, self.layout
        ctx = self.work.prompt_len + b.step
        rows = lay.rows_total
        att_kw = dict(rows=(0, rows), tokens=(0, ctx), stored_len=ctx - 1, q_len=1, group=md.group_size,
                      head_dim=md.head_dim, flops=4.0 * rows * md.group_size * ctx * md.head_dim,
                      kv_bytes=self._rows_kv_bytes(ctx, rows))
        if self.kv_on == "gpu":
            return [b.add(Attention, L, m, "attn", "attn_out", [qkv], device="gpu", **att_kw)]
        qkv_bytes = self.work.micro_batch * (md.q_dim + 2 * md.kv_dim) * self.dt
        q_down = b.add(Transfer, L, m, "q_d2h", "qkv", [qkv], src="gpu", dst="dram", nbytes=qkv_bytes)
        deps = [q_down]
        disks = self.disks()
        if disks:
            hist = self._rows_kv_bytes(ctx - 1, rows)
            per = hist // len(disks)
            key = "disks"
            buf = self.buffers.wait_for(key)
            for i, d in enumerate(disks):
                prev_write = b.name(L, m, f"kvw{i}", step=b.step - 1) if b.step > 1 else b.name(L, m, f"kvstore{i}", step=0)
                deps.append(b.add(Transfer, L, m, f"kvr{i}", "kv", [buf, prev_write], src=d, dst="dram",
                                  nbytes=per, req_bytes=min(self.chunk_bytes(), per)))
        device = "gpu" if self.attention_on == "gpu" else "cpu"
        if device == "gpu":  # KV streamed to the GPU for attention there (DeepSpeed-like)
            hist = self._rows_kv_bytes(ctx - 1, rows)
            deps.append(b.add(Transfer, L, m, "kv_h2d", "kv", deps[1:] or [qkv], src="dram", dst="gpu", nbytes=hist))
        att = b.add(Attention, L, m, "attn", "attn_out", deps, device=device, **att_kw)
        if disks:
            self.buffers.used_by("disks", att)
            new = self._rows_kv_bytes(1, rows)
            for i, d in enumerate(disks):
                b.add(Transfer, L, m, f"kvw{i}", "kv_new", [q_down], src="dram", dst=d,
                      nbytes=new // len(disks), req_bytes=new // len(disks))
        if device == "gpu":
            return [att]
        out_bytes = self.work.micro_batch * md.q_dim * self.dt
        return [b.add(Transfer, L, m, "o_h2d", "attn_out", [att], src="dram", dst="gpu", nbytes=out_bytes)]

    def memory_needs(self) -> Dict[str, Tuple[float, float]]:
        kv = self.kv_bytes_total()
        return self._base_memory_needs(kv_gpu=kv if self.kv_on == "gpu" else 0.0,
                                       kv_host=kv if self.kv_on == "host" else 0.0)


@register_policy("flexgen_ssd")
class FlexGenSsd(FlexGenBuilder):
    """FLEX(SSD): KV on the conventional SSDs (RAID0 through the host), CPU attention."""

    kv_on, attention_on = "ssd", "cpu"


@register_policy("flexgen_csd")
class FlexGenCsd(FlexGenBuilder):
    """FLEX(16 SSDs): KV on the CSDs used as plain SSDs (RAID0 through the host), CPU attention."""

    kv_on, attention_on = "csd", "cpu"


@register_policy("flexgen_dram")
class FlexGenDram(FlexGenBuilder):
    """FLEX(DRAM): KV in host DRAM, CPU attention; `oom` when it does not fit."""

    kv_on, attention_on = "host", "cpu"


@register_policy("flexgen_gpu")
class FlexGenGpu(FlexGenBuilder):
    """KV resident in GPU memory, GPU attention; `oom` when it does not fit."""

    kv_on, attention_on = "gpu", "gpu"
