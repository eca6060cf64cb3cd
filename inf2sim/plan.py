"""The plan IR: the contract between the scheduler and every backend.

The scheduler (`inf2sim.scheduler`) emits one `StepPlan` per step (step 0 is the
prefill, step s >= 1 the decode of token s). A step is a small DAG of frozen ops;
an op names the ops it waits for in `deps` (possibly ops of earlier steps, e.g. an
async spill). Backends (`inf2sim.des` times them, `inf2hw.engine` runs them with
real tensors) execute a step and return one `Span` per op.

Units: bytes (`nbytes`, `req_bytes`), FLOP (`flops`), token counts, seconds in spans.
Memory locations used as transfer endpoints (see `inf2sim.topology`):
`gpu`, `dram`, `ssd{i}` (conventional SSD i), `csd{i}.ssd` (a CSD's flash),
`csd{i}.fpga` (a CSD's FPGA DRAM). Compute devices: `gpu`, `cpu`, `csd{i}.fpga`.

Ops and spans are slotted dataclasses that are *treated* as immutable but not
declared `frozen`: a frozen dataclass sets every field through
`object.__setattr__` (~4 us per op on the 2-core dev VM) and a long run builds
~500K ops. Nothing may mutate an op once the scheduler has emitted it.

Row convention (shared with the real engine through `inf2sim.layout`): within a
micro-batch, KV row r = sequence * num_kv_heads + kv_head; `rows=(lo, hi)` is a
half-open range of such rows, `tokens=(t0, t1)` a half-open range of positions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

Range = Tuple[int, int]
NO_RANGE: Range = (0, 0)


@dataclass(slots=True)
class Op:
    """Common fields. `what` says which tensor or computation the op is about, so a
    real backend knows what to do: weights, embed, qkv, kv, kv_new, x, attn_out,
    post, head, kv_regen, tail, merge."""

    name: str
    deps: Tuple[str, ...]
    step: int
    layer: int
    mb: int
    what: str

    @property
    def kind(self) -> str:
        return type(self).__name__


@dataclass(slots=True)
class Transfer(Op):
    """Move `nbytes` from memory `src` to memory `dst` in requests of `req_bytes`
    (0 = one request of nbytes). For storage endpoints the request size picks the
    point on the SSD's bandwidth curve."""

    src: str = ""
    dst: str = ""
    nbytes: int = 0
    req_bytes: int = 0
    rows: Range = NO_RANGE
    tokens: Range = NO_RANGE


@dataclass(slots=True)
class DenseCompute(Op):
    """A dense kernel (projection, MLP, KV regeneration, head) on `device`:
    `flops` of arithmetic touching `nbytes` of device memory, over `tokens` tokens
    of `seqs` sequences (seqs=(lo, hi) in the micro-batch)."""

    device: str = "gpu"
    flops: float = 0.0
    nbytes: int = 0
    seqs: Range = NO_RANGE
    tokens: Range = NO_RANGE


@dataclass(slots=True)
class Attention(Op):
    """Attention for KV rows `rows` of micro-batch `mb` on `device`.

    Context positions `tokens` are attended; of them the first `stored_len`
    (from tokens[0]) come from the device's own store, the rest are the host
    buffer's tail (write-back) shipped with the query. `q_len` queries per row
    (prompt length at prefill, 1 at decode); `group` query heads per KV row.
    `partial=True` means the output is a partial (out, lse) merged later.
    `kv_layout` is how the K,V it reads lie in memory: "rows" (each row's positions
    contiguous, a KV store) or "tokens" (token-major, as read back from FlexGen's drive
    files: a row's positions are strided), which CPU attention runs at its own rate."""

    device: str = "gpu"
    rows: Range = NO_RANGE
    tokens: Range = NO_RANGE
    stored_len: int = 0
    q_len: int = 1
    group: int = 1
    head_dim: int = 128
    flops: float = 0.0
    kv_bytes: int = 0
    partial: bool = False
    kv_layout: str = "rows"


@dataclass(slots=True)
class Spill(Op):
    """Write-back of new KV: `nbytes` from memory `src` (host DRAM for the delayed
    write-back buffer; a CSD's FPGA when it writes what it was sent) to storage
    `dst` in requests of `req_bytes`, off the critical path."""

    src: str = "dram"
    dst: str = ""
    nbytes: int = 0
    req_bytes: int = 0
    rows: Range = NO_RANGE
    tokens: Range = NO_RANGE


@dataclass(frozen=True)
class StepPlan:
    """One step's DAG. `ctx_len` is the number of positions attended after this
    step's token(s) join the cache. `ops` is in a valid topological order."""

    step: int
    phase: str  # "prefill" | "decode"
    ctx_len: int
    new_tokens: int
    ops: Tuple[Op, ...]

    def by_name(self) -> Dict[str, Op]:
        return {op.name: op for op in self.ops}


@dataclass(slots=True)
class Span:
    """One executed (or simulated) op: where it ran and when, seconds from run start."""

    name: str
    kind: str
    what: str
    resource: str
    step: int
    layer: int
    start_s: float
    end_s: float
    nbytes: int = 0

    @property
    def dur_s(self) -> float:
        return self.end_s - self.start_s


@dataclass
class Plan:
    """A run: the steps in order, plus metadata the backends share (layout, sizes).
    Steps are built lazily by `steps()` so a long run never holds every op at once."""

    meta: Dict[str, object]
    _builder: object = field(repr=False, default=None)
    num_steps: int = 0

    def steps(self, only: Optional[List[int]] = None) -> Iterator[StepPlan]:
        for s in range(self.num_steps) if only is None else only:
            yield self._builder.build_step(s)  # type: ignore[attr-defined]


def storage_of(endpoint: str) -> str:
    """What a plan endpoint is on storage: `ssd` for a conventional drive (`ssd3`), `csd` for
    a CSD's flash (`csd3.ssd`), '' for anything else (memories, devices)."""
    if endpoint.startswith("ssd") and endpoint[3:].isdigit():
        return "ssd"
    return "csd" if endpoint.startswith("csd") and endpoint.endswith(".ssd") else ""


def issue_class(op: Op) -> int:
    """0 for a prefetch, 1 for any other op: within a step, the order in which ops that
    wait to be served by one queue go (prefetches first, then plan order), in the
    engine's issue loop (`inf2hw.engine`) and at the DES's gates (`inf2sim.des.backend`). Prefetches
    are the copies that feed later compute and wait on nothing the host must do first:
    weights and X-cache rows into the GPU, and KV history read from a drive or a CSD's
    flash (a layer's history load goes ahead of an earlier layer's spill)."""
    if not isinstance(op, Transfer):
        return 1
    if op.dst == "gpu" and op.what in ("weights", "x"):
        return 0
    if op.what == "kv" and storage_of(op.src):
        return 0
    return 1


def check_dag(step: StepPlan, done_before: Optional[set] = None) -> None:
    """Raise ValueError if an op depends on an op that is neither earlier in this
    step nor in `done_before` (names of ops of earlier steps)."""
    seen = set(done_before or ())
    for op in step.ops:
        for d in op.deps:
            if d not in seen:
                raise ValueError(f"op {op.name} depends on unknown or later op {d}")
        if op.name in seen:
            raise ValueError(f"duplicate op name {op.name}")
        seen.add(op.name)
