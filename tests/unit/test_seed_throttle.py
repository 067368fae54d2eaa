"""The sender's token bucket through what the sending threads call (take), on a fake clock.

A sender waits in a thread of its own; the test moves the fake clock and wakes it (``set_rate``
with the same rate makes a waiting sender look at the clock again), so nothing waits for time to
pass but the 50 ms :meth:`WaitingSender.waiting` gives a sender to leave ``take()``.
"""

from __future__ import annotations

import threading
from typing import Callable

from twisted.trial.unittest import SynchronousTestCase

from orchagent.seed.pipe import Closed
from orchagent.seed.throttle import BURST_BYTES, MIN_BYTES_PER_SECOND, Throttle, minimum_rate

MB = 1024 * 1024


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class WaitingSender:
    """A sending thread in ``throttle.take(size)``."""

    def __init__(self, throttle: Throttle, size: int = MB, cancelled: Callable[[], bool] = lambda: False) -> None:
        self._outcomes: list[str] = []
        self._thread = threading.Thread(target=self._run, args=(throttle, size, cancelled), daemon=True)
        self._thread.start()

    def _run(self, throttle: Throttle, size: int, cancelled: Callable[[], bool]) -> None:
        try:
            throttle.take(size, cancelled)
            self._outcomes.append("sent")
        except Closed:
            self._outcomes.append("closed")

    def waiting(self) -> bool:
        """Still in ``take()`` after 50 ms (the fake clock does not move meanwhile)."""
        self._thread.join(0.05)
        return self._thread.is_alive()

    def outcome(self) -> str:
        """How it left ``take()``: "sent" (the batch may go) or "closed"."""
        self._thread.join(5)
        return self._outcomes[0] if self._outcomes else "still waiting"


class ThrottleTests(SynchronousTestCase):
    """The bucket holds the rate, follows a change at once, passes everything at 0, bounds bursts,
    serves waiting senders in turn and lets one go when the limit is lifted, the transfer ends or its
    connection dropped."""

    def setUp(self):
        self.clock = FakeClock()

    def advance(self, throttle: Throttle, seconds: float) -> None:
        """Let ``seconds`` of fake time pass and wake a waiting sender to see it."""
        self.clock.now += seconds
        throttle.set_rate(throttle.rate)

    def assertWaitsFor(self, throttle: Throttle, seconds: float) -> None:
        """A sender now waits ``seconds`` of fake time (to within 1%), then may send (a MB)."""
        sender = WaitingSender(throttle)
        self.advance(throttle, seconds * 0.99)
        self.assertTrue(sender.waiting(), f"let go before {seconds} s")
        self.advance(throttle, seconds * 0.01)
        self.assertEqual(sender.outcome(), "sent")

    def test_each_batch_waits_until_the_rate_paid_for_the_last(self):
        throttle = Throttle(4 * MB, self.clock)
        throttle.take(MB)  # a new bucket: the first batch goes at once
        for _ in range(3):
            self.assertWaitsFor(throttle, 0.25)

    def test_a_change_takes_effect_at_once(self):
        throttle = Throttle(1 * MB, self.clock)
        throttle.take(4 * MB)
        sender = WaitingSender(throttle)
        self.assertTrue(sender.waiting())
        throttle.set_rate(8 * MB)  # the 4 s of debt are paid at the new rate: half a second
        self.advance(throttle, 0.49)
        self.assertTrue(sender.waiting())
        self.advance(throttle, 0.01)
        self.assertEqual(sender.outcome(), "sent")
        throttle.set_rate(2 * MB)
        self.assertWaitsFor(throttle, 0.5)  # the MB that sender took

    def test_zero_means_no_limit(self):
        throttle = Throttle(0, self.clock)
        for _ in range(1000):
            throttle.take(MB)  # returns at once: this thread would hang otherwise
        throttle.set_rate(MB)
        throttle.take(MB)  # no debt from the unlimited time
        sender = WaitingSender(throttle)
        self.assertTrue(sender.waiting())
        throttle.set_rate(0)  # lifted: the waiting sender goes at once
        self.assertEqual(sender.outcome(), "sent")

    def test_idle_time_earns_at_most_one_batch_of_burst(self):
        throttle = Throttle(MB, self.clock)
        self.clock.now += 3600
        burst = 0
        while not (sender := WaitingSender(throttle)).waiting():
            burst += MB
        throttle.close()
        self.assertEqual(sender.outcome(), "closed")
        self.assertGreaterEqual(burst, MB)
        self.assertLessEqual(burst, BURST_BYTES + MB)  # the credit, plus the batch that goes into debt

    def test_senders_go_in_turn(self):
        # the lanes of a seed share its bucket: the one that waited longest goes first, and the
        # next one waits for its batch (a lane's silences stay within a batch of each lane)
        throttle = Throttle(MB, self.clock)
        throttle.take(MB)
        first = WaitingSender(throttle)
        self.assertTrue(first.waiting())
        second = WaitingSender(throttle)
        self.assertTrue(second.waiting())
        self.advance(throttle, 1.0)
        self.assertEqual(first.outcome(), "sent")
        self.assertTrue(second.waiting())
        self.advance(throttle, 1.0)
        self.assertEqual(second.outcome(), "sent")

    def test_a_sender_whose_connection_dropped_leaves_its_turn(self):
        throttle = Throttle(MB, self.clock)
        throttle.take(10 * MB)
        dropped: list[bool] = []
        first = WaitingSender(throttle, cancelled=lambda: bool(dropped))
        self.assertTrue(first.waiting())
        second = WaitingSender(throttle)
        self.assertTrue(second.waiting())
        dropped.append(True)
        throttle.wake()
        self.assertEqual(first.outcome(), "closed")
        self.advance(throttle, 10.0)
        self.assertEqual(second.outcome(), "sent")  # the turn went on to it

    def test_a_waiting_sender_wakes_when_the_limit_is_lifted(self):
        throttle = Throttle(MIN_BYTES_PER_SECOND, self.clock)
        throttle.take(100 * MB)  # 1600 s of debt
        sender = WaitingSender(throttle)
        self.assertTrue(sender.waiting())
        throttle.set_rate(0)
        self.assertEqual(sender.outcome(), "sent")

    def test_a_waiting_sender_wakes_when_the_transfer_ends(self):
        throttle = Throttle(MIN_BYTES_PER_SECOND, self.clock)
        throttle.take(100 * MB)
        sender = WaitingSender(throttle)
        self.assertTrue(sender.waiting())
        throttle.close()
        self.assertEqual(sender.outcome(), "closed")

    def test_the_minimum_rate_keeps_pauses_inside_the_stall_timer(self):
        self.assertEqual(minimum_rate(300), MIN_BYTES_PER_SECOND)
        self.assertEqual(minimum_rate(4), MB)  # a 1 MB batch's pause is a quarter of 4 s
        self.assertEqual(minimum_rate(0), 4 * MB)
        self.assertEqual(minimum_rate(4, lanes=3), 3 * MB)  # a lane's pause: a batch of each lane, in turn
