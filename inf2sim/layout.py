"""Where each KV row and token lives: the layout the scheduler plans with and the
real engine stores by. Called by `inf2sim.scheduler` and `inf2hw.engine`.

Within a micro-batch of `mb_size` sequences, KV row r = seq * num_kv_heads + head.
The cooperative X-cache takes the first `x_seqs` sequences (all their heads: X is
per token, not per head); the remaining rows go to the CSDs:
  partition=rows      CSD i owns a contiguous slice of rows and every token of them;
                      slices differ by at most one row.
  partition=sequence  every CSD owns every remaining row, but only a share of the
                      tokens: the prompt is split evenly, and decode spill chunk k
                      (c tokens) goes to CSD k mod n. Partial results merge exactly
                      by log-sum-exp.
Write-back: decode step s (s >= 1) adds one token; after step s, if s % c == 0 the
host buffer (c tokens) is spilled. So at step s the stored decode tokens are
c * ((s - 1) // c) and the tail shipped from the host is the rest (1..c tokens).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import List, Tuple

from .specs import HardwareProfile, ModelSpec, Policy, Workload

Range = Tuple[int, int]


def split_even(n: int, parts: int) -> List[Range]:
    """Half-open ranges covering [0, n) in `parts` slices differing by <= 1."""
    base, extra = divmod(n, parts)
    out, lo = [], 0
    for i in range(parts):
        hi = lo + base + (1 if i < extra else 0)
        out.append((lo, hi))
        lo = hi
    return out


def pow2_fraction(x: float, max_exponent: int = 6) -> float:
    """Round x in [0, 1] to the nearest of 1, 1/2, 1/4, ..., 1/2^max_exponent (or 0
    below half the smallest), the granularity the v2 cache scheduler uses."""
    if x <= 0:
        return 0.0
    cands = [2.0 ** -j for j in range(max_exponent + 1)] + [0.0]
    return min(cands, key=lambda c: (abs(c - min(x, 1.0)), -c))


@dataclass(frozen=True)
class Layout:
    mb_size: int
    num_kv_heads: int
    x_seqs: int
    csd_count: int
    partition: str
    c: int
    prompt_len: int

    @property
    def rows_total(self) -> int:
        return self.mb_size * self.num_kv_heads

    @property
    def x_rows(self) -> Range:
        return (0, self.x_seqs * self.num_kv_heads)

    @property
    def csd_rows_all(self) -> Range:
        return (self.x_seqs * self.num_kv_heads, self.rows_total)

    @cached_property
    def _slices(self) -> List[Range]:
        lo, hi = self.csd_rows_all
        if self.partition == "sequence":
            return [(lo, hi)] * self.csd_count
        return [(lo + a, lo + b) for a, b in split_even(hi - lo, self.csd_count)]

    @cached_property
    def _active(self) -> List[int]:
        return [i for i, (a, b) in enumerate(self._slices) if b > a]

    def csd_rows(self, i: int) -> Range:
        return self._slices[i]

    def active_csds(self) -> List[int]:
        return self._active

    # ---- tokens
    def stored_decode_tokens(self, step: int) -> int:
        """Decode tokens already spilled to storage when decode step `step` attends."""
        return self.c * ((step - 1) // self.c) if step >= 1 else 0

    def tail_len(self, step: int) -> int:
        return step - self.stored_decode_tokens(step) if step >= 1 else 0

    def spills_after(self, step: int) -> bool:
        return step >= 1 and step % self.c == 0

    def spill_chunk(self, step: int) -> int:
        """Index k of the decode chunk spilled after `step` (valid when spills_after)."""
        return step // self.c - 1

    def spill_owner(self, chunk: int) -> List[int]:
        """CSDs that receive decode chunk `chunk`."""
        act = self.active_csds()
        if self.partition == "sequence" and act:
            return [act[chunk % len(act)]]
        return act

    def prompt_tokens(self, i: int) -> Range:
        if self.partition == "sequence":
            return split_even(self.prompt_len, self.csd_count)[i]
        return (0, self.prompt_len)

    def stored_tokens(self, i: int, step: int) -> int:
        """Tokens CSD i holds for each of its rows when decode step `step` attends."""
        a, b = self.prompt_tokens(i)
        n = b - a
        chunks = self.stored_decode_tokens(step) // self.c
        if self.partition == "sequence":
            owners = [k for k in range(chunks) if self.spill_owner(k) == [i]]
            return n + self.c * len(owners)
        return n + self.c * chunks

    def last_spill_step_for(self, i: int, step: int) -> int:
        """The latest step < `step` whose spill reached CSD i (0 = only the prefill)."""
        for s in range(step - 1, 0, -1):
            if self.spills_after(s) and i in self.spill_owner(self.spill_chunk(s)):
                return s
        return 0


def x_cache_alpha(model: ModelSpec, workload: Workload, hw: HardwareProfile, policy: Policy) -> float:
    """Resolve policy.xcache.alpha: a number, 'auto' (v2 bandwidth model
    a = 2 B_PCI / (B_SSD + B_PCI), rounded to a power-of-two fraction; with X in host
    DRAM (`where=host`) also capped by the memory budget, since the cache must fit)
    or 'budget' (largest a whose X fits the host memory budget next to host-resident
    weights)."""
    a = policy.xcache.alpha
    if isinstance(a, (int, float)):
        return float(a)
    if a == "auto":
        b_ssd = hw.csd_count * max(hw.csd.ssd.read_gbps)
        b_pci = hw.chassis.uplink.up_gbps if policy.xcache.where == "ssd" else hw.gpu.link.down_gbps
        bw = pow2_fraction(2 * b_pci / (b_ssd + b_pci)) if b_ssd + b_pci > 0 else 0.0
        return bw if policy.xcache.where == "ssd" else min(bw, _budget_alpha(model, workload, hw, policy))
    return _budget_alpha(model, workload, hw, policy)


def _budget_alpha(model: ModelSpec, workload: Workload, hw: HardwareProfile, policy: Policy) -> float:
    seq_len = workload.prompt_len + workload.gen_len
    per_seq = seq_len * model.num_layers * cooperative_bytes_per_token(model)
    weights_host = model.layer_weight_bytes() * model.num_layers * policy.weights.host
    free = hw.host.memory_budget_gb * 1e9 - weights_host
    if free <= 0:
        return 0.0
    n = int(free // per_seq)
    return min(1.0, n / workload.batch)


def cooperative_bytes_per_token(model: ModelSpec) -> int:
    """Per token per layer bytes the cooperative rows keep: X when X is smaller than
    K+V (MHA: h vs 2h), otherwise K,V themselves (GQA models such as Qwen2.5-32B,
    where X = 5120 values > K+V = 2048): regenerating K,V from a larger X would move
    more bytes than it saves, so those rows keep K,V and skip the regeneration GEMM."""
    return min(model.x_bytes_per_token_layer(), model.kv_bytes_per_token_layer())


def keeps_x(model: ModelSpec) -> bool:
    return model.x_bytes_per_token_layer() < model.kv_bytes_per_token_layer()


def make_layout(model: ModelSpec, workload: Workload, hw: HardwareProfile, policy: Policy, alpha: float = 0.0,
                kv_on: str = "csd", c: int = 1) -> Layout:
    mb = workload.micro_batch
    x_seqs = int(round(alpha * mb))
    csds = hw.csd_count if kv_on == "csd" else 0
    return Layout(mb, model.num_kv_heads, x_seqs, max(csds, 1), policy.partition, max(c, 1), workload.prompt_len)
