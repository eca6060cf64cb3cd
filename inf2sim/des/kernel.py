"""The DES's event loop: simpy's Environment plus a cheaper kind of entry.

Made by `inf2sim.des.backend.DesBackend`; used by `inf2sim.des.flows` and
`inf2sim.des.devices` through `call_in`. Times in seconds.

A run schedules ~1.3 events per op and has ~500K ops. A simpy `Event` costs an
object, its callback list and a pass through `Environment.step` (~2 us each on
the 2-core dev VM, about a quarter of the DES's time). `Kernel.call_in(delay_s,
fn, arg)` instead queues the plain entry `(time, priority, id, fn, arg)` in the
*same* heap, with ids from the same counter, so callbacks and ordinary simpy
events (processes, timeouts, `run(until=event)`) interleave exactly as events
scheduled in that order would: by time, then priority, then scheduling order.
`step` runs such an entry as `fn(arg)` and hands anything else to simpy.

This extends simpy 4's Environment through the attributes its own `schedule`
and `step` use (`_now`, `_queue`, `_eid`); tests/test_des_*.py pin the times.
"""
from __future__ import annotations

from heapq import heappop, heappush
from operator import attrgetter
from typing import Any, Callable

import simpy
from simpy.events import NORMAL


class Deferred(simpy.Event):
    """An event whose firing time is decided later: `fire_in(delay_s, value)`
    schedules it like a Timeout created then (one heap entry, no process)."""

    def fire_in(self, delay_s: float, value=None, priority=NORMAL) -> "Deferred":
        self._ok = True
        self._value = value
        self.env.schedule(self, priority, max(delay_s, 0.0))
        return self


class Kernel(simpy.Environment):
    """A simpy Environment with `call_in` (see the module docstring)."""

    now = property(attrgetter("_now"), doc="The current simulated time (s); a C-level getter: read ~10^6 times a run.")

    def call_in(self, delay_s: float, fn: Callable[[Any], None], arg: Any = None, priority: int = NORMAL) -> None:
        """Call `fn(arg)` `delay_s` seconds from now (after the entries and events
        already queued for that instant at that priority)."""
        heappush(self._queue, (self._now + delay_s, priority, next(self._eid), fn, arg))

    def step(self) -> None:
        queue = self._queue
        if queue and len(queue[0]) == 5:
            self._now, _, _, fn, arg = heappop(queue)
            fn(arg)
        else:
            super().step()

    def run_until_stopped(self) -> bool:
        """Process the queue until an entry calls `stop()` (True) or it runs dry
        (False). `run(until=event)` without an Event or a `step` call per entry."""
        self._stopped = False
        queue = self._queue
        while queue:
            if len(queue[0]) == 5:
                self._now, _, _, fn, arg = heappop(queue)
                fn(arg)
            else:
                super().step()
            if self._stopped:
                return True
        return False

    def stop(self, _arg: Any = None) -> None:
        """End `run_until_stopped` after the entry being processed (a `call_in` target)."""
        self._stopped = True


def call_in_for(env: simpy.Environment) -> Callable[..., None]:
    """`env.call_in` for a Kernel; for a plain simpy Environment, the same through
    an Event per call (slower, same order)."""
    if isinstance(env, Kernel):
        return env.call_in

    def call_in(delay_s: float, fn: Callable[[Any], None], arg: Any = None, priority: int = NORMAL) -> None:
        ev = simpy.Event(env)
        ev._ok, ev._value = True, None
        ev.callbacks.append(lambda _ev: fn(arg))
        env.schedule(ev, priority, delay_s)

    return call_in
