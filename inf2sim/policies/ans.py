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
from ..plan import NO_RANGE, Attention, DenseCompute, Spill, Transfer
from ..registry import register_policy
from ..scheduler import PlanBuilder, StepOps
from .flexgen import KvBuffers

LSE_BYTES = 4  # one fp32 log-sum-exp per query head, returned with partial outputs
# GPU buffers of X (or K,V) per micro-batch for the X-cache: the load of layer L reuses the
# buffer of layer L - X_RING, so it waits until that layer's regeneration (or attention)
# has consumed it. The real engine allocates exactly this ring (inf2hw.ops).
X_RING = 2


class AnsBuilder(PlanBuilder):
    kv_on, attention_on = "csd", "csd"
    write_back = False
    x_cache = False

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.buffers = KvBuffers(2)
        self._shape_step, self._shape = -1, None

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
    def _csd_names(self, i: int) -> Tuple[str, ...]:
        """Tags and endpoints of CSD i: down, kv, attn, up, spill, tail, kvstore, fpga, ssd, buffer key."""
        return (f"down.csd{i}", f"kv.csd{i}", f"attn.csd{i}", f"up.csd{i}", f"spill.csd{i}", f"tail.csd{i}",
                f"kvstore.csd{i}", f"csd{i}.fpga", f"csd{i}.ssd", f"csd{i}")

    def _decode_shape(self, s: int) -> tuple:
        """What decode step `s` does on each CSD: the same for every layer and
        micro-batch, so computed once per step (the layout's token bookkeeping walks
        the spill history). Returns (per-CSD tuples, spills, q_down bytes, rows)."""
        if self._shape_step == s:
            return self._shape
        md, lay = self.model, self.layout
        d, g, dt = md.head_dim, md.group_size, self.dt
        ctx = self.work.prompt_len + s
        tail = lay.tail_len(s)
        seq = lay.partition == "sequence"
        v2 = self.write_back and self.policy.wb.variant == "v2"
        owners = lay.spill_owner(lay.stored_decode_tokens(s) // self.c) if seq else []
        tail_owner = owners[0] if owners else None
        csds = []
        for i in lay.active_csds():
            r0, r1 = lay.csd_rows(i)
            rows = r1 - r0
            stored = lay.stored_tokens(i, s)
            my_tail = tail if (not seq or i == tail_owner) else 0
            tail_op = None
            if my_tail and v2:  # host CPU computes q.K_tail^T for the buffered tail
                tail_op = ((ctx - my_tail, ctx), 2.0 * rows * g * my_tail * d, rows * my_tail * d * dt)
                tail_bytes = rows * my_tail * (g * 4 + d * dt)  # fp32 scores + V
            else:
                tail_bytes = rows * my_tail * 2 * d * dt
            last_spill = lay.last_spill_step_for(i, s)
            csds.append((self._csd_names(i), (r0, r1), tail_op, rows * g * d * dt + tail_bytes, (ctx - my_tail, ctx),
                         last_spill, self._kv(rows, stored), stored * d * dt, (0, stored), (0, stored + my_tail),
                         stored, 4.0 * rows * g * (stored + my_tail) * d,
                         rows * g * (d * dt + (LSE_BYTES if seq else 0))))
        spills = []
        if lay.spills_after(s):
            for i in lay.spill_owner(lay.spill_chunk(s)):
                r0, r1 = lay.csd_rows(i)
                spills.append((self._csd_names(i), self._kv(r1 - r0, self.c), self.c * d * dt, (r0, r1),
                               (ctx - self.c, ctx)))
        lo, hi = lay.csd_rows_all
        self._shape_step = s
        self._shape = (csds, spills, (hi - lo) * (g + 2) * d * dt, (lo, hi))
        return self._shape

    def decode_attention(self, b: StepOps, L: int, m: int, qkv: str) -> List[str]:
        """Per CSD: q,k,v (and the write-back tail) down, its KV read peer-to-peer,
        attention on the FPGA, the output up; spills; the X-cache share; gather."""
        md, lay, s = self.model, self.layout, b.step
        d, g, dt = md.head_dim, md.group_size, self.dt
        ctx = self.work.prompt_len + s
        seq = lay.partition == "sequence"
        csds, spills, q_bytes, all_rows = self._decode_shape(s)
        ops, users, slots = b.ops, self.buffers.users, self.buffers.slots
        p = b.prefix(L, m)
        q_down = b.put(Transfer(p + "q_d2h", (qkv,), s, L, m, "qkv", "gpu", "dram", q_bytes, 0,
                                all_rows, NO_RANGE))
        earlier: Dict[int, str] = {0: f"s0.L{L}.m{m}."}  # name prefixes of this layer in earlier steps
        ups = []
        for (names, rows, tail_op, down_bytes, down_toks, last_spill, kv_bytes, kv_req, kv_toks, att_toks, stored,
             att_flops, up_bytes) in csds:
            t_down, t_kv, t_att, t_up, t_spill, t_tail, t_store, fpga, ssd, key = names
            if tail_op is not None:
                tail = p + t_tail
                ops.append(Attention(tail, (q_down,), s, L, m, "tail", "cpu", rows, tail_op[0], 0, 1, g, d,
                                     tail_op[1], tail_op[2], True))
                down_deps = (q_down, tail)
            else:
                down_deps = (q_down,)
            down = p + t_down
            ops.append(Transfer(down, down_deps, s, L, m, "qkv", "dram", fpga, down_bytes, 0, rows, down_toks))
            pre = earlier.get(last_spill)
            if pre is None:
                pre = earlier[last_spill] = f"s{last_spill}.L{L}.m{m}."
            spill_dep = pre + (t_spill if last_spill else t_store)
            att = p + t_att
            u = users.get(key)  # the KV buffer ring of this CSD (KvBuffers.wait_for / used_by)
            if u is None:
                u = users[key] = []
            kv = p + t_kv
            ops.append(Transfer(kv, (u[-slots], spill_dep) if len(u) >= slots else (spill_dep,), s, L, m, "kv", ssd,
                                fpga, kv_bytes, kv_req, rows, kv_toks))
            u.append(att)
            if len(u) > slots:
                del u[:-slots]
            ops.append(Attention(att, (down, kv), s, L, m, "attn_out", fpga, rows, att_toks, stored, 1, g, d,
                                 att_flops, kv_bytes, seq))
            up = p + t_up
            ops.append(Transfer(up, (att,), s, L, m, "attn_out", fpga, "dram", up_bytes, 0, rows, NO_RANGE))
            ups.append(up)
        for names, nbytes, req, rows, toks in spills:
            # plain ANS: the FPGA writes the k,v it was sent (card-internal path);
            # write-back: the host buffer spills over the shared link
            src, dep = ("dram", q_down) if self.write_back else (names[7], p + names[0])
            ops.append(Spill(p + names[4], (dep,), s, L, m, "kv_new", src, names[8], nbytes, req, rows, toks))
        if lay.x_seqs:
            ups.append(self._cooperative(b, L, m, qkv, ctx))
        lo, hi = all_rows
        gathered = (hi - lo) * g * d * dt
        out = b.put(Transfer(p + "o_h2d", tuple(ups), s, L, m, "attn_out", "dram", "gpu", gathered, 0, all_rows,
                             NO_RANGE))
        if seq:
            return [b.add(DenseCompute, L, m, "merge", "merge", [out], device="gpu",
                          flops=4.0 * (hi - lo) * g * d * len(lay.active_csds()), nbytes=gathered)]
        return [out]

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
        # One copy stream carries the X loads in issue order (FIFO: a load starts when the one
        # before it is done, not all of a step's loads at once sharing the link), each into a
        # ring buffer that the layer X_RING back must have released.
        use = "kv_regen" if keeps_x(md) else "attn.gpu"
        ring = [b.name(L - X_RING, m, use)] if L >= X_RING else []
        prev = b.last.get("x_stream")
        load = b.last["x_stream"] = b.add(Transfer, L, m, "xload", "x", loads + ring + ([prev] if prev else []),
                                          src="dram", dst="gpu", nbytes=hist, rows=(0, rows), tokens=(0, ctx - 1))
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
