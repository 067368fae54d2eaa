"""The sender's token bucket, on a fake clock: no test here sleeps."""

from __future__ import annotations

import threading

from twisted.trial.unittest import SynchronousTestCase

from orchagent.seed.pipe import Closed
from orchagent.seed.throttle import BURST_BYTES, MIN_BYTES_PER_SECOND, Throttle, minimum_rate

MB = 1024 * 1024


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def send_for(throttle: Throttle, clock: FakeClock, seconds: float, batch: int = MB, step: float = 0.001) -> int:
    """Bytes a sender that sends ``batch`` whenever allowed gets out in ``seconds`` of fake time."""
    sent, end = 0, clock.now + seconds
    while clock.now < end:
        if throttle.delay() == 0:
            throttle.spend(batch)
            sent += batch
        else:
            clock.now += step
    return sent


class ThrottleTests(SynchronousTestCase):
    """The bucket holds the rate, follows a change at once, passes everything at 0 and bounds bursts."""

    def setUp(self):
        self.clock = FakeClock()

    def test_the_rate_is_followed(self):
        throttle = Throttle(4 * MB, self.clock)
        sent = send_for(throttle, self.clock, 10)
        self.assertApproximates(sent / 10, 4 * MB, 0.15 * MB)  # within one batch over 10 s

    def test_a_change_takes_effect_at_once(self):
        throttle = Throttle(1 * MB, self.clock)
        send_for(throttle, self.clock, 2)
        throttle.set_rate(8 * MB)
        self.assertLessEqual(throttle.delay(), 1 / 8)  # the old debt is paid at the new rate
        self.assertApproximates(send_for(throttle, self.clock, 2) / 2, 8 * MB, 0.6 * MB)
        throttle.set_rate(2 * MB)
        self.assertApproximates(send_for(throttle, self.clock, 4) / 4, 2 * MB, 0.3 * MB)

    def test_zero_means_no_limit(self):
        throttle = Throttle(0, self.clock)
        for _ in range(1000):
            self.assertEqual(throttle.delay(), 0)
            throttle.spend(MB)
        throttle.wait()  # returns at once
        throttle.set_rate(MB)
        self.assertEqual(throttle.delay(), 0)  # no debt from the unlimited time
        throttle.spend(MB)
        self.assertApproximates(throttle.delay(), 1.0, 0.01)
        throttle.set_rate(0)
        self.assertEqual(throttle.delay(), 0)

    def test_idle_time_earns_at_most_one_batch_of_burst(self):
        throttle = Throttle(MB, self.clock)
        self.clock.now += 3600
        burst = 0
        while throttle.delay() == 0:
            throttle.spend(MB)
            burst += MB
        self.assertLessEqual(burst, BURST_BYTES + MB)  # the credit, plus the batch that goes into debt

    def waiting_sender(self, throttle: Throttle) -> tuple[threading.Thread, list[str]]:
        """A thread in wait() on 1600 s of debt (the fake clock never moves)."""
        throttle.spend(100 * MB)
        outcomes: list[str] = []

        def sender():
            try:
                throttle.wait()
                outcomes.append("sent")
            except Closed:
                outcomes.append("closed")

        thread = threading.Thread(target=sender)
        thread.start()
        thread.join(0.05)
        self.assertEqual(outcomes, [])  # it is waiting
        return thread, outcomes

    def test_a_waiting_sender_wakes_when_the_limit_is_lifted(self):
        throttle = Throttle(MIN_BYTES_PER_SECOND, self.clock)
        thread, outcomes = self.waiting_sender(throttle)
        throttle.set_rate(0)
        thread.join(5)
        self.assertEqual(outcomes, ["sent"])

    def test_a_waiting_sender_wakes_when_the_transfer_ends(self):
        throttle = Throttle(MIN_BYTES_PER_SECOND, self.clock)
        thread, outcomes = self.waiting_sender(throttle)
        throttle.close()
        thread.join(5)
        self.assertEqual(outcomes, ["closed"])

    def test_the_minimum_rate_keeps_pauses_inside_the_stall_timer(self):
        self.assertEqual(minimum_rate(300), MIN_BYTES_PER_SECOND)
        self.assertEqual(minimum_rate(4), MB)  # a 1 MB batch's pause is a quarter of 4 s
        self.assertEqual(minimum_rate(0), 4 * MB)
