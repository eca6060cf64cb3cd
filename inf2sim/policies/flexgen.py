"""FlexGen-style baselines: the KV cache in GPU memory, host DRAM, or on disks read
back through the host, attention on the CPU where the cache lives (or the GPU for
GPU-resident KV). Called through the registry by `inf2sim.scheduler.build_plan`.

Policies: flexgen_ssd (conventional SSDs, RAID0), flexgen_csd (the SmartSSDs used
as plain SSDs, RAID0), flexgen_dram, flexgen_gpu. FlexGen stores a layer's cache as
one token-major tensor, so a decode read of one micro-batch is one large request
per drive (striped with the RAID chunk, `policy.params.raid_chunk_kib`, default
512 KiB = the mdadm default chunk; 0 = unstriped drives, one request per move, as the
real engine's drive files are read and written: `inf2hw.validate.engine_spec`).
"""
from __future__ import annotations

from typing import Dict, List, Tuple

from ..plan import NO_RANGE, Attention, Transfer
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
        if self.kv_on == "ssd":
            self._disks = [f"ssd{i}" for i in range(self.hw.ssd_count)]
        elif self.kv_on == "csd":
            self._disks = [f"csd{i}.ssd" for i in range(self.hw.csd_count)]
        else:
            self._disks = []

    def disks(self) -> List[str]:
        return self._disks

    def chunk_bytes(self) -> int:
        return int(self.policy.params.get("raid_chunk_kib", 512)) * 1024

    def request_bytes(self, move_bytes: int) -> int:
        """Request size of one drive's share of a move: a RAID chunk, or all of it (chunk 0)."""
        chunk = self.chunk_bytes()
        return min(chunk, move_bytes) if chunk > 0 else move_bytes

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
                             nbytes=nbytes // len(disks), req_bytes=self.request_bytes(nbytes // len(disks))))
        return out

    # ----------------------------------------------------------------- decode
    def decode_attention(self, b: StepOps, L: int, m: int, qkv: str) -> List[str]:
        md, lay, s = self.model, self.layout, b.step
        ctx = self.work.prompt_len + s
        rows = lay.rows_total
        p, ops = b.prefix(L, m), b.ops
        attn = p + "attn"

        def attention(deps, device: str, kv_layout: str = "rows") -> str:
            return b.put(Attention(attn, deps, s, L, m, "attn_out", device, (0, rows), (0, ctx), ctx - 1, 1,
                                   md.group_size, md.head_dim, 4.0 * rows * md.group_size * ctx * md.head_dim,
                                   self._rows_kv_bytes(ctx, rows), False, kv_layout))

        if self.kv_on == "gpu":
            return [attention((qkv,), "gpu")]
        qkv_bytes = self.work.micro_batch * (md.q_dim + 2 * md.kv_dim) * self.dt
        q_down = b.add(Transfer, L, m, "q_d2h", "qkv", [qkv], src="gpu", dst="dram", nbytes=qkv_bytes)
        deps = [q_down]
        disks = self._disks
        if disks:
            per = self._rows_kv_bytes(ctx - 1, rows) // len(disks)
            req = self.request_bytes(per)
            buf = self.buffers.wait_for("disks")
            # each drive's read waits for its write of the previous step (or the prompt's store)
            prev = f"s{s - 1}.L{L}.m{m}.kvw" if s > 1 else f"s0.L{L}.m{m}.kvstore"
            for i, d in enumerate(disks):
                deps.append(b.put(Transfer(f"{p}kvr{i}", (buf, f"{prev}{i}") if buf else (f"{prev}{i}",), s, L, m,
                                           "kv", d, "dram", per, req, NO_RANGE, NO_RANGE)))
        device = "gpu" if self.attention_on == "gpu" else "cpu"
        if device == "gpu":  # KV streamed to the GPU for attention there (DeepSpeed-like)
            hist = self._rows_kv_bytes(ctx - 1, rows)
            deps.append(b.add(Transfer, L, m, "kv_h2d", "kv", deps[1:] or [qkv], src="dram", dst="gpu", nbytes=hist))
        # the drives' reads stay token-major where the CPU attends over them (inf2hw.ops._attend_drives)
        attention(tuple(deps), device, "tokens" if disks and device == "cpu" else "rows")
        if disks:
            self.buffers.used_by("disks", attn)
            n = self._rows_kv_bytes(1, rows) // len(disks)
            for i, d in enumerate(disks):
                ops.append(Transfer(f"{p}kvw{i}", (q_down,), s, L, m, "kv_new", "dram", d, n, n, NO_RANGE, NO_RANGE))
        if device == "gpu":
            return [attn]
        out_bytes = self.work.micro_batch * md.q_dim * self.dt
        return [b.add(Transfer, L, m, "o_h2d", "attn_out", [attn], src="dram", dst="gpu", nbytes=out_bytes)]

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
