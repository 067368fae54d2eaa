"""Answers that are costly to compute (a ``du`` walk, a configured command) but asked for often.

Orchestrator may poll an agent several times a second (contract B.0.3), and each poll asks for
the same few facts.  A :class:`ShortCache` runs one computation per key at a time, however many
callers wait for it, and keeps the result for ``fresh_seconds``.  Up to ``stale_seconds`` an
older value is answered at once while a new computation runs for the next caller, so a poll
never waits twice on the same slow walk.  Whoever changes the facts calls :meth:`invalidate`.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Hashable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from orchagent import logs
from orchagent.interfaces import Clock

log = logs.logger(__name__)


class ShortCache:
    def __init__(self, clock: Clock, fresh_seconds: float, stale_seconds: float | None = None):
        self._clock = clock
        self._fresh = fresh_seconds
        self._stale = fresh_seconds if stale_seconds is None else stale_seconds
        self._values: dict[Hashable, tuple[float, Any]] = {}
        self._waiting: dict[Hashable, list[Deferred]] = {}
        self._generation = 0

    async def get(self, key: Hashable, compute: Callable[[], Awaitable[Any]]) -> Any:
        hit = self._values.get(key)
        age = self._clock.seconds() - hit[0] if hit is not None else None
        if hit is not None and age < self._fresh:
            return hit[1]
        computing = self._computing(key, compute)
        if hit is not None and age < self._stale:
            computing.addErrback(lambda failure: log.warn("refreshing {key} failed: {error}",
                                                          key=key, error=failure.value))
            return hit[1]  # answer now; the refreshed value serves the next caller
        return await computing

    def invalidate(self) -> None:
        """Forget every value; computations in flight still answer their callers but are not kept."""
        self._values.clear()
        self._generation += 1

    def _computing(self, key: Hashable, compute: Callable[[], Awaitable[Any]]) -> Deferred:
        """A Deferred of the value from the computation in flight for ``key``, starting one if none."""
        mine: Deferred = Deferred()
        waiting = self._waiting.get(key)
        if waiting is not None:
            waiting.append(mine)
            return mine
        self._waiting[key] = [mine]
        Deferred.fromCoroutine(compute()).addBoth(self._computed, key, self._generation)
        return mine

    def _computed(self, outcome, key: Hashable, generation: int) -> None:
        waiters = self._waiting.pop(key)
        failed = isinstance(outcome, Failure)
        if not failed and generation == self._generation:
            self._values[key] = (self._clock.seconds(), outcome)
        for waiter in waiters:
            if failed:
                waiter.errback(outcome)
            else:
                waiter.callback(outcome)
