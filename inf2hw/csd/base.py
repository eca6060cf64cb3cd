"""The CSD device interface the real engine drives: one method per plan op on a CSD.

Called by `inf2hw.engine` when it executes an op whose endpoint or device is
`csd{i}.*`. Implemented by `inf2hw.csd.emulated.EmulatedCsd` (an OS process owning
KV files on a real disk) and `inf2hw.csd.smartssd.SmartSsdCsd` (a Samsung SmartSSD
through pyxrt). Every call is asynchronous: it returns a `Ticket` at once; `wait`
blocks until that command is done and returns its result and its measured
(start_s, end_s) on `time.perf_counter()`'s clock.

Plan op -> call (rows are KV rows r = seq * num_kv_heads + kv_head of one
micro-batch, see `inf2sim.layout`; tensors are CPU torch tensors):

  Transfer dram -> csd{i}.ssd   (prefill `kvstore.csd{i}`)  store(layer, mb, rows, t0, k, v)
  Spill    * -> csd{i}.ssd      (`spill.csd{i}`)            store(layer, mb, rows, t0, k, v)
        where k, v: [n_rows, n_tokens, head_dim] in the storage dtype; tokens t0.. are
        this CSD's local token slots (appended in order; sequence partitioning keeps
        its own local numbering).
  Transfer csd{i}.ssd -> csd{i}.fpga (`kv.csd{i}`)          load(layer, mb, rows, n_stored)
        reads tokens [0, n_stored) of those rows from storage into device memory.
  Transfer dram -> csd{i}.fpga  (`down.csd{i}`)             send_query(layer, mb, q, tail)
        q: [n_rows, group, head_dim]; tail: None, or ("kv", k_tail, v_tail) with
        [n_rows, n_tail, head_dim] each (write-back v1 / plain ANS), or
        ("scores", scores, v_tail) with scores [n_rows, group, n_tail] fp32 already
        scaled by 1/sqrt(head_dim) (write-back v2).
  Attention on csd{i}.fpga      (`attn.csd{i}`)             attend(layer, mb)
        attention of the staged query over the loaded KV plus the tail.
  Transfer csd{i}.fpga -> dram  (`up.csd{i}`)               fetch(layer, mb) -> (out, lse)
        out: [n_rows, group, head_dim] fp32, lse: [n_rows, group] fp32 (natural log of
        the softmax denominator of scaled scores), so partials merge exactly.

Failures surface as `CsdError` naming the CSD index (a dead or stalled worker within
`timeout_s`, ENOSPC on a store, a missing driver).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Protocol, Tuple

Range = Tuple[int, int]


class CsdError(RuntimeError):
    """A CSD failed; the message starts with `csd{i}:` and is one line."""


@dataclass(frozen=True)
class Ticket:
    csd: int
    seq: int
    kind: str


@dataclass(frozen=True)
class CsdConfig:
    """What every CSD implementation needs to lay out its storage."""

    index: int
    directory: str
    num_layers: int
    num_micro_batches: int
    rows: int  # KV rows this CSD holds per micro-batch (its slice; all CSD rows for sequence partition)
    row_lo: int  # first global row of the slice within a micro-batch
    capacity_tokens: int  # token slots per row (prompt + generated, upper bound)
    head_dim: int
    group: int
    dtype: str = "fp32"  # storage dtype: fp32 | fp16 | bf16
    compute: str = "torch"  # torch | hls
    read_gbps: float = 0.0  # 0 = uncapped
    direct_io: str = "auto"  # auto | on | off
    keep_files: bool = False
    timeout_s: float = 10.0


class Csd(Protocol):
    index: int

    def store(self, layer: int, mb: int, rows: Range, t0: int, k: Any, v: Any) -> Ticket: ...

    def load(self, layer: int, mb: int, rows: Range, n_stored: int) -> Ticket: ...

    def send_query(self, layer: int, mb: int, q: Any, tail: Optional[tuple]) -> Ticket: ...

    def attend(self, layer: int, mb: int) -> Ticket: ...

    def fetch(self, layer: int, mb: int) -> Ticket: ...

    def wait(self, ticket: Ticket) -> Tuple[Any, float, float]:
        """(result, start_s, end_s); result is (out, lse) for fetch, else None."""
        ...

    def close(self) -> None: ...
