"""`SlotQueue`: hands out slots (agents, or the one board) to waiters by priority, one holder each.

Used on both sides of the wire: `AgentDevice` queues measurements for the free agents of its pool,
and the agent queues measurements from several clients for its one board. A waiter names a
priority (lower goes first; equal priorities are served first come, first served) and which slots
it may use; a free slot goes to the most urgent waiter that may use it, so a CI budget check
overtakes queued search trials but never interrupts a running measurement.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

S = TypeVar("S", bound=Hashable)


@dataclass(order=True)
class _Waiter(Generic[S]):
    priority: int
    seq: int
    eligible: Callable[[S], bool] = field(compare=False)
    granted: S | None = field(default=None, compare=False)


class SlotQueue(Generic[S]):
    """A priority queue in front of a fixed set of slots; `acquire` blocks, `release` hands on."""

    def __init__(self, slots: Sequence[S]) -> None:
        """`slots` are the resources; each is held by at most one caller at a time."""
        self.slots: tuple[S, ...] = tuple(slots)
        self._cond = threading.Condition()
        self._held: set[S] = set()
        self._waiters: list[_Waiter[S]] = []
        self._seq = itertools.count()
        self._last_used: dict[S, int] = dict.fromkeys(self.slots, -1)

    @property
    def waiting(self) -> int:
        """Callers waiting for a slot."""
        with self._cond:
            return len(self._waiters)

    @property
    def busy(self) -> tuple[S, ...]:
        """Slots held right now."""
        with self._cond:
            return tuple(s for s in self.slots if s in self._held)

    def is_held(self, slot: S) -> bool:
        """True while somebody holds `slot`."""
        with self._cond:
            return slot in self._held

    def _dispatch(self) -> None:
        """Grant free slots to waiters in priority order (least recently used slot first)."""
        free = [s for s in self.slots if s not in self._held]
        if not free:
            return
        for w in sorted(self._waiters):
            if w.granted is not None:
                continue
            usable = [s for s in free if w.eligible(s)]
            if not usable:
                continue
            pick = min(usable, key=lambda s: self._last_used[s])
            w.granted = pick
            self._held.add(pick)
            free.remove(pick)
            if not free:
                break

    def acquire(self, priority: int = 10, *, eligible: Callable[[S], bool] | None = None,
                timeout: float | None = None, give_up: Callable[[], bool] | None = None,
                poll_s: float = 0.25) -> S | None:
        """Wait for a slot and hold it; None on `timeout` or when `give_up()` turns true.

        `eligible(slot)` says which slots this caller may use (re-evaluated as it waits, so a slot
        that comes back to life becomes usable); `give_up` is polled every `poll_s` seconds.
        """
        ok = eligible or (lambda _s: True)
        deadline = None if timeout is None else time.monotonic() + timeout
        me: _Waiter[S] = _Waiter(priority, next(self._seq), ok)
        with self._cond:
            self._waiters.append(me)
            handed = False
            try:
                while True:
                    self._dispatch()
                    if me.granted is not None:
                        self._last_used[me.granted] = next(self._seq)
                        self._cond.notify_all()  # others may have been granted a slot too
                        handed = True
                        return me.granted
                    if give_up is not None and give_up():
                        return None
                    wait = poll_s
                    if deadline is not None:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            return None
                        wait = min(wait, left)
                    self._cond.wait(wait)
            finally:
                self._waiters.remove(me)
                if not handed and me.granted is not None:  # interrupted after a grant: hand it on
                    self._held.discard(me.granted)
                    self._cond.notify_all()

    def release(self, slot: S) -> None:
        """Give `slot` back; the most urgent waiter that may use it gets it."""
        with self._cond:
            self._held.discard(slot)
            self._cond.notify_all()

    def wake(self) -> None:
        """Make waiters re-check eligibility (call when a slot's health changes)."""
        with self._cond:
            self._cond.notify_all()
