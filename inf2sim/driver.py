"""The one driver loop every backend shares, and the Backend protocol.

Called by `inf2sim.simulate` (with the DES backend) and by `inf2hw.run` (with the
real engine). A backend executes one `StepPlan` at a time, honouring deps, and
returns a `Span` per op it finished (seconds since the run started). Ops that run
off the critical path (spills) may finish during a later step; `finish()` drains
them. Deps on ops of earlier steps the backend never executed (fast-fidelity
sampling skips steps) count as already done.
"""
from __future__ import annotations

from typing import Callable, Iterable, List, Optional, Protocol

from .plan import Span, StepPlan


class RunFailure(RuntimeError):
    """A backend could not finish a run (a device died, a disk filled up). The message
    is one line naming what failed; the CLI prints it as `inf2: error: ...`."""


class Backend(Protocol):
    def execute(self, step: StepPlan) -> List[Span]:
        ...

    def finish(self) -> List[Span]:
        ...


def drive(
    steps: Iterable[StepPlan],
    backend: Backend,
    on_step: Optional[Callable[[StepPlan, List[Span]], None]] = None,
) -> List[Span]:
    """Feed steps to a backend in order; return every span (including drained ones)."""
    spans: List[Span] = []
    for step in steps:
        got = backend.execute(step)
        spans.extend(got)
        if on_step is not None:
            on_step(step, got)
    spans.extend(backend.finish())
    return spans
