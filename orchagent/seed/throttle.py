"""The sender's pacing: a token bucket that a running seed's rate limit can change at any time.

    throttle = Throttle(4 * 1024 * 1024)      # bytes per second; 0: no limit
    throttle.take(batch_size)                 # sending thread: block until the batch may go
    throttle.set_rate(16 * 1024 * 1024)       # reactor (the seed-throttle route), any time

The bucket may go into debt: a batch goes as soon as the balance is not negative, then its size
is subtracted, so a batch of any size passes and the average follows the rate exactly.  The
balance never exceeds one batch's worth of credit (:data:`BURST_BYTES`), so after an idle moment
at most about two batches leave at once.  The lanes of a seed share its bucket, first come, first
served: no lane waits for more than one batch of each other lane, which bounds its silences
(:func:`minimum_rate`).
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable

from orchagent.seed.pipe import Closed

BURST_BYTES = 1024 * 1024  # about one batch (a 1 MB read and its DATA header)
MIN_BYTES_PER_SECOND = 64 * 1024  # below this a batch takes over 16 s, too close to stall timers
MAX_BYTES_PER_SECOND = 1 << 50  # far beyond any link; bounds what the route accepts


def minimum_rate(stall_timeout: float, lanes: int = 1) -> int:
    """The lowest limit whose pauses between batches stay well inside the peers' stall timers.

    Between two of its batches a lane is silent for up to one batch's time (:data:`BURST_BYTES` at
    the rate) per lane of the seed (each goes once in turn), and a connection silent for half of
    ``SeedStallTimeoutSeconds`` counts as stalled (:func:`~orchagent.seed.resumption.silence_limit`):
    the pause must stay under a quarter of it.
    """
    return max(MIN_BYTES_PER_SECOND, -(-4 * BURST_BYTES * max(lanes, 1) // max(int(stall_timeout), 1)))


class Throttle:
    """A token bucket, thread-safe: one sender spends, the reactor may change the rate."""

    def __init__(self, rate: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Condition()
        self._rate = rate
        self._balance = 0.0  # bytes that may go now; negative: the debt of the last batch
        self._last = clock()
        self._closed = False
        self._queue: collections.deque[object] = collections.deque()  # waiting senders' turns, first come first

    @property
    def rate(self) -> int:
        """Bytes per second; 0: no limit."""
        return self._rate

    def set_rate(self, rate: int) -> None:
        """Any thread: a new limit from now on (0: none); a waiting sender recomputes at once."""
        with self._lock:
            self._refill()
            self._rate = rate
            if not rate:
                self._balance = 0.0  # a later limit starts without old debt or credit
            self._lock.notify_all()

    def take(self, size: int, cancelled: Callable[[], bool] = lambda: False) -> None:
        """Sending thread: block until a batch of ``size`` bytes may go, after those of the senders
        that waited before, and count it; :class:`Closed` once :meth:`close` ran, or ``cancelled()``
        holds (:meth:`wake`).  Counting under the same lock lets the next sender see the debt."""
        if not self._rate and not self._closed:
            return  # unlimited: no lock on the hot path
        turn = object()
        with self._lock:
            self._queue.append(turn)
            try:
                while not (stopped := self._closed or cancelled()):
                    first = self._queue[0] is turn
                    if first and (pause := self._pause()) <= 0:
                        break
                    self._lock.wait(pause if first else None)  # set_rate, close, wake and the one before wake it
            finally:
                self._queue.remove(turn)
                self._lock.notify_all()
            if stopped:
                raise Closed()
            if self._rate:
                self._balance -= size

    def wake(self) -> None:
        """Any thread: waiting senders look at their ``cancelled`` again."""
        with self._lock:
            self._lock.notify_all()

    def close(self) -> None:
        """The transfer is over: wake the sender out of its wait."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()

    def _pause(self) -> float:
        self._refill()
        if not self._rate or self._balance >= 0:
            return 0.0
        return -self._balance / self._rate

    def _refill(self) -> None:
        now = self._clock()
        if self._rate:
            self._balance = min(self._balance + (now - self._last) * self._rate, BURST_BYTES)
        self._last = now
