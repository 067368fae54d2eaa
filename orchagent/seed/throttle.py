"""The sender's pacing: a token bucket that a running seed's rate limit can change at any time.

    throttle = Throttle(4 * 1024 * 1024)      # bytes per second; 0: no limit
    throttle.wait()                           # sending thread: block until a batch may go
    throttle.spend(batch_size)
    throttle.set_rate(16 * 1024 * 1024)       # reactor (the seed-throttle route), any time

The bucket may go into debt: a batch goes as soon as the balance is not negative, then its size
is subtracted, so a batch of any size passes and the average follows the rate exactly.  The
balance never exceeds one batch's worth of credit (:data:`BURST_BYTES`), so after an idle moment
at most about two batches leave at once.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from orchagent.seed.pipe import Closed

BURST_BYTES = 1024 * 1024  # about one batch (a 1 MB read and its DATA header)
MIN_BYTES_PER_SECOND = 64 * 1024  # below this a batch takes over 16 s, too close to stall timers
MAX_BYTES_PER_SECOND = 1 << 50  # far beyond any link; bounds what the route accepts


def minimum_rate(stall_timeout: float) -> int:
    """The lowest limit whose pauses between batches stay well inside the peers' stall timers.

    Between two batches the sender is silent for up to one batch's time (:data:`BURST_BYTES` at
    the rate), and a connection silent for half of ``SeedStallTimeoutSeconds`` counts as stalled
    (:func:`~orchagent.seed.resumption.silence_limit`): the pause must stay under a quarter of it.
    """
    return max(MIN_BYTES_PER_SECOND, -(-4 * BURST_BYTES // max(int(stall_timeout), 1)))


class Throttle:
    """A token bucket, thread-safe: one sender spends, the reactor may change the rate."""

    def __init__(self, rate: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Condition()
        self._rate = rate
        self._balance = 0.0  # bytes that may go now; negative: the debt of the last batch
        self._last = clock()
        self._closed = False

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

    def spend(self, size: int) -> None:
        """A batch of ``size`` bytes went (or is going) out."""
        if not self._rate:
            return  # unlimited: no lock on the hot path
        with self._lock:
            self._refill()
            if self._rate:
                self._balance -= size

    def wait(self) -> None:
        """Sending thread: block until the next batch may go; :class:`Closed` once :meth:`close` ran."""
        if not self._rate and not self._closed:
            return
        with self._lock:
            while not self._closed and (pause := self._pause()) > 0:
                self._lock.wait(pause)  # set_rate and close wake it earlier
            if self._closed:
                raise Closed()

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
