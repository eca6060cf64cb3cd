"""Attention near storage and the INF² techniques built on it, as plan builders.
Called through the registry by `inf2sim.scheduler.build_plan`.

  ans         KV rows (batch x head) split over the CSDs; each CSD reads its KV
              peer-to-peer (SSD -> FPGA, never the host link) and computes attention;
              q,k,v go down through host DRAM, the output comes up.
  ans_wb      + delayed KV write-back: new k/v stay in a host buffer and spill every
              `wb.c` tokens (Spill ops, off the critical path). The buffered tail joins
              attention exactly: v1 ships the tail's k/v to the CSD; v2 has the host CPU
              compute q.K_tail^T and ships scores + tail V.
  ans_xcache  + cooperative X-cache: the first alpha*mb sequences keep X (host DRAM in
              `xcache.where=host`, the CSDs' flash read over the shared link in `ssd`);
              the GPU regenerates K,V from X and attends those rows concurrently.
              Where X is larger than K+V (GQA), those rows keep K,V instead (see
              `inf2sim.layout.cooperative_bytes_per_token`).
  inf2        all of the above.
`partition=sequence` splits each row's tokens over the CSDs and merges partial
results exactly by log-sum-exp on the GPU (balances load when rows don't divide).
"""
from __future__ import annotations

from typing import Dict, List, Tuple

from ..layout import keeps_x, x_cache_alpha
from ..plan import Attention, DenseCompute, Spill, Transfer
from ..registry import register_policy
from ..scheduler import PlanBuilder, StepOps
from .flexgen import KvBuffers

LSE_BYTES = 4  # one fp32 log-sum-exp per query head, returned with partial outputs


class AnsBuilder(PlanBuilder):
    kv_on, attention_on = "csd", "csd"
    write_back = False
    x_cache = False

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.buffers = KvBuffers(2)

    @property
    def c(self) -> int:
        return self.layout.c

    def resolve_alpha(self) -> float:
        return x_cache_alpha(self.model, self.work, self.hw, self.policy) if self.x_cache else 0.0

    def wb_c(self) -> int:
        return self.policy.wb.c if self.write_back else 1

    # bytes ----------------------------------------------------------------
    def _kv(self, rows: int, tokens: int) -> int:
        return rows * tokens * 2 * self.model.head_dim * self.dt

    def _x(self, seqs: int, tokens: int) -> int:
        return seqs * tokens * self.model.x_bytes_per_token_layer()

    def _coop(self, seqs: int, tokens: int) -> int:
        return self._x(seqs, tokens) if keeps_x(self.model) else self._kv(seqs * self.model.num_kv_heads, tokens)

    def x_sources(self) -> List[str]:
        return [f"csd{i}.ssd" for i in range(self.hw.csd_count)]

    # -------------------------------------------------------------- prefill
    def prefill_store(self, b: StepOps, L: int, m: int, qkv: str) -> List[str]:
        lay, P = self.layout, self.work.prompt_len
        attn = b.name(L, m, "attn")
        out = []
        nx = lay.x_seqs
        if nx:
            nbytes = self._coop(nx, P)
            out.append(b.add(Transfer, L, m, "xstore", "x", [qkv], src="gpu", dst="dram", nbytes=nbytes))
            if self.policy.xcache.where == "ssd":
                srcs = self.x_sources()
                for i, d in enumerate(srcs):
                    out.append(b.add(Transfer, L, m, f"xstore{i}", "x", [out[0]], src="dram", dst=d,
                                     nbytes=nbytes // len(srcs), req_bytes=nbytes // len(srcs)))
        lo, hi = lay.csd_rows_all
        down = b.add(Transfer, L, m, "kvstore", "kv", [attn], src="gpu", dst="dram", nbytes=self._kv(hi - lo, P))
        for i in lay.active_csds():
            r0, r1 = lay.csd_rows(i)
            t0, t1 = lay.prompt_tokens(i)
            out.append(b.add(Transfer, L, m, f"kvstore.csd{i}", "kv", [down], src="dram", dst=f"csd{i}.ssd",
                             nbytes=self._kv(r1 - r0, t1 - t0), req_bytes=(t1 - t0) * self.model.head_dim * self.dt,
                             rows=(r0, r1), tokens=(t0, t1)))
        return out

    # --------------------------------------------------------------- decode
    def decode_attention(self, b: StepOps, L: int, m: int, qkv: str) -> List[str]:
        md, lay, s = self.model, self.layout, b.step
        d, g, dt = md.head_dim, md.group_size, self.dt
        ctx = self.work.prompt_len + s
        tail = lay.tail_len(s)
        seq = lay.partition == "sequence"
        lo, hi = lay.csd_rows_all
        q_down = b.add(Transfer, L, m, "q_d2h", "qkv", [qkv], src="gpu", dst="dram",
                       nbytes=(hi - lo) * (g + 2) * d * dt, rows=(lo, hi))
        v2 = self.write_back and self.policy.wb.variant == "v2"
        stored_dec = lay.stored_decode_tokens(s)
        owners = lay.spill_owner(stored_dec // self.c) if seq else []
        tail_owner = owners[0] if owners else None
        outs, ups = [], []
        for i in lay.active_csds():
            r0, r1 = lay.csd_rows(i)
            rows = r1 - r0
            stored = lay.stored_tokens(i, s)
            my_tail = tail if (not seq or i == tail_owner) else 0
            deps_down = [q_down]
            if my_tail and v2:  # host CPU computes q.K_tail^T for the buffered tail
                deps_down.append(b.add(Attention, L, m, f"tail.csd{i}", "tail", [q_down], device="cpu",
                                       rows=(r0, r1), tokens=(ctx - my_tail, ctx), stored_len=0, q_len=1, group=g,
                                       head_dim=d, flops=2.0 * rows * g * my_tail * d,
                                       kv_bytes=rows * my_tail * d * dt, partial=True))
                tail_bytes = rows * my_tail * (g * 4 + d * dt)  # fp32 scores + V
            else:
                tail_bytes = rows * my_tail * 2 * d * dt
            down = b.add(Transfer, L, m, f"down.csd{i}", "qkv", deps_down, src="dram", dst=f"csd{i}.fpga",
                         nbytes=rows * g * d * dt + tail_bytes, rows=(r0, r1), tokens=(ctx - my_tail, ctx))
            last_spill = lay.last_spill_step_for(i, s)
            spill_dep = b.name(L, m, f"spill.csd{i}", step=last_spill) if last_spill else b.name(L, m, f"kvstore.csd{i}", step=0)
            buf = self.buffers.wait_for(f"csd{i}")
            kv = b.add(Transfer, L, m, f"kv.csd{i}", "kv", [buf, spill_dep], src=f"csd{i}.ssd", dst=f"csd{i}.fpga",
                       nbytes=self._kv(rows, stored), req_bytes=stored * d * dt, rows=(r0, r1), tokens=(0, stored))
            att = b.add(Attention, L, m, f"attn.csd{i}", "attn_out", [down, kv], device=f"csd{i}.fpga",
                        rows=(r0, r1), tokens=(0, stored + my_tail), stored_len=stored, q_len=1, group=g,
                        head_dim=d, flops=4.0 * rows * g * (stored + my_tail) * d,
                        kv_bytes=self._kv(rows, stored), partial=seq)
            self.buffers.used_by(f"csd{i}", att)
            ups.append(b.add(Transfer, L, m, f"up.csd{i}", "attn_out", [att], src=f"csd{i}.fpga", dst="dram",
                             nbytes=rows * g * (d * dt + (LSE_BYTES if seq else 0)), rows=(r0, r1)))
        if lay.spills_after(s):
            for i in lay.spill_owner(lay.spill_chunk(s)):
                r0, r1 = lay.csd_rows(i)
                # plain ANS: the FPGA writes the k,v it was sent (card-internal path);
                # write-back: the host buffer spills over the shared link
                src, dep = (("dram", q_down) if self.write_back else (f"csd{i}.fpga", b.name(L, m, f"down.csd{i}")))
                b.add(Spill, L, m, f"spill.csd{i}", "kv_new", [dep], src=src, dst=f"csd{i}.ssd",
                      nbytes=self._kv(r1 - r0, self.c), req_bytes=self.c * d * dt, rows=(r0, r1),
                      tokens=(ctx - self.c, ctx))
        deps = list(ups)
        if lay.x_seqs:
            deps.append(self._cooperative(b, L, m, qkv, ctx))
        gathered = (hi - lo) * g * d * dt
        out = b.add(Transfer, L, m, "o_h2d", "attn_out", deps, src="dram", dst="gpu", nbytes=gathered, rows=(lo, hi))
        outs.append(out)
        if seq:
            outs.append(b.add(DenseCompute, L, m, "merge", "merge", [out], device="gpu",
                              flops=4.0 * (hi - lo) * g * d * len(lay.active_csds()), nbytes=gathered))
        return outs[-1:]

    def _cooperative(self, b: StepOps, L: int, m: int, qkv: str, ctx: int) -> str:
        """GPU side of the X-cache: load X (or K,V for GQA), regenerate, attend."""
        md, lay, s = self.model, self.layout, b.step
        nx = lay.x_seqs
        rows = nx * md.num_kv_heads
        hist = self._coop(nx, ctx - 1)
        save = b.add(Transfer, L, m, "xsave", "x_new", [qkv], src="gpu", dst="dram", nbytes=self._coop(nx, 1))
        loads = []
        if self.policy.xcache.where == "ssd":
            stored = self.work.prompt_len + lay.stored_decode_tokens(s)
            on_ssd = self._coop(nx, stored)
            srcs = self.x_sources()
            for i, src in enumerate(srcs):
                last = lay.c * ((s - 1) // lay.c)  # the step whose spill brought the newest stored chunk
                prev = b.name(L, m, f"xspill{i}", step=last) if last >= 1 else b.name(L, m, f"xstore{i}", step=0)
                loads.append(b.add(Transfer, L, m, f"xload{i}", "x", [prev], src=src, dst="dram",
                                   nbytes=on_ssd // len(srcs), req_bytes=on_ssd // len(srcs)))
            if lay.spills_after(s):
                for i, dst in enumerate(srcs):
                    b.add(Spill, L, m, f"xspill{i}", "x_new", [save], dst=dst,
                          nbytes=self._coop(nx, self.c) // len(srcs), req_bytes=self._coop(nx, self.c) // len(srcs))
        load = b.add(Transfer, L, m, "xload", "x", loads, src="dram", dst="gpu", nbytes=hist, rows=(0, rows),
                     tokens=(0, ctx - 1))
        src = load
        if keeps_x(md):
            src = b.add(DenseCompute, L, m, "kv_regen", "kv_regen", [load, qkv], device="gpu",
                        flops=2.0 * nx * (ctx - 1) * md.hidden * 2 * md.kv_dim,
                        nbytes=hist + md.hidden * 2 * md.kv_dim * self.dt, seqs=(0, nx), tokens=(0, ctx - 1))
        return b.add(Attention, L, m, "attn.gpu", "attn_out", [src, qkv], device="gpu", rows=(0, rows),
                     tokens=(0, ctx), stored_len=ctx - 1, q_len=1, group=md.group_size, head_dim=md.head_dim,
                     flops=4.0 * rows * md.group_size * ctx * md.head_dim, kv_bytes=self._kv(rows, ctx))

    def memory_needs(self) -> Dict[str, Tuple[float, float]]:
        lay = self.layout
        seq = self.work.prompt_len + self.work.gen_len
        coop = 0.0
        if lay.x_seqs:
            coop = self._coop(lay.x_seqs, seq) * self.model.num_layers * self.work.num_micro_batches
        host = coop if self.policy.xcache.where == "host" else 0.0
        need = self._base_memory_needs(kv_gpu=0.0, kv_host=0.0, extra_host=host)
        budget = self.hw.host.memory_budget_gb * 1e9
        if host > 0:
            need["host X-cache budget"] = (host, budget)
        return need


@register_policy("ans")
class Ans(AnsBuilder):
    """Attention near storage, KV written every token (c = 1), no X-cache."""


@register_policy("ans_wb")
class AnsWb(AnsBuilder):
    write_back = True


@register_policy("ans_xcache")
class AnsXcache(AnsBuilder):
    x_cache = True


@register_policy("inf2")
class Inf2(AnsBuilder):
    write_back = True
    x_cache = True
