"""Seeds whose connection stays open and goes silent (a frozen middlebox, a black-holed route), both
sides in this process, through the relay of test_seed_resume.py.

``link.stall()`` freezes the connections open at that moment for good (both ends stay open and hear
nothing, not even the other end's reset) while new connections pass: the side that notices the
silence drops the connection and the seed resumes over a new one.  ``link.freeze()`` holds new
connections too: the seed then fails about ``SeedStallTimeoutSeconds`` after the link went silent,
saying it stalled, with nothing left behind.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.defer import gatherResults

from orchagent.seed.protocol import TransferFailed
from orchagent.seed.resumption import silence_limit
from tests.integration.test_seed_resume import MB, LinkedSeed
from tests.support.deferreds import inline
from tests.support.seed_trees import describe_tree

# Stall timers are this small so the tests stay fast; the receiver's keepalives then come every
# second, and a connection silent for 1.5 s is dropped.
STALL_SECONDS = 3.0


class StallTests(LinkedSeed):
    """A connection stalled mid-seed resumes (plain, TLS, one lane of three); a link stalled for good
    fails the seed in time, saying so, with no staging and no thread left."""

    async def _stalled_once(self, tls: bool = False, streams: int = 1) -> None:
        await self._start(stall_timeout=STALL_SECONDS, tls=tls, streams=streams, big_files=24 * MB)
        progress = self.receiving.progress
        await self._until(lambda: progress.bytes_done >= 0.25 * (progress.bytes_total or 1e18)
                          and self.receiving.lanes == streams, "a quarter of the data")
        self.link.stall(None if streams == 1 else 1)
        await gatherResults([self.sending.when_done(), self.receiving.when_done()], consumeErrors=True)
        self.assertEqual(describe_tree(self.target), describe_tree(self.source))  # every file's digest too
        # replaced (an attempt may first hear BUSY while the receiver still winds up the stalled one)
        self.assertGreater(self.link.connections, streams)
        for transfer in (self.sending, self.receiving):
            self.assertEqual((transfer.state, transfer.progress.resumes), ("succeeded", 1))
            total = transfer.progress.bytes_total
            self.assertEqual(transfer.progress.bytes_done, total)
            self.assertLess(transfer.progress.resent_bytes, total / 10, (transfer.role, transfer.progress))
        await self._no_seed_threads()

    @inline
    async def test_a_connection_stalled_mid_seed_resumes(self):
        await self._stalled_once()

    @inline
    async def test_a_connection_stalled_mid_seed_over_tls_resumes(self):
        # the workers, blocked in send and recv on the silent socket, notice it and give the connection back
        await self._stalled_once(tls=True)

    @inline
    async def test_only_the_stalled_lane_resumes(self):
        await self._stalled_once(streams=3)
        for transfer in (self.sending, self.receiving):
            self.assertEqual(sorted(member.progress.resumes for member in transfer._members), [0, 0, 1])

    async def _stalled_for_good(self, tls: bool) -> None:
        await self._start(stall_timeout=STALL_SECONDS, tls=tls, big_files=24 * MB)
        await self._until(lambda: self.receiving.progress.bytes_done > 4 * MB, "the first bytes")
        self.link.freeze()  # new connections get through no further than the relay either
        frozen = reactor.seconds()
        took = {}
        for transfer in (self.receiving, self.sending):
            transfer.when_done().addErrback(lambda _, role=transfer.role: took.setdefault(role, reactor.seconds()))
        with self.assertRaises(TransferFailed) as received:
            await self.receiving.when_done()
        with self.assertRaises(TransferFailed) as sent:
            await self.sending.when_done()
        for role, when in took.items():  # the margin: winding up (the staging directory removed) on a busy machine
            self.assertTrue(STALL_SECONDS - 0.5 < when - frozen < STALL_SECONDS + 2, (role, when - frozen))
        silence = silence_limit(STALL_SECONDS)
        self.assertIn(f"seed 7 stalled: the sender did not send data for {STALL_SECONDS:g} seconds "
                      f"(SeedStallTimeoutSeconds): the connection carried nothing for {silence:g} s",
                      str(received.exception))
        self.assertIn(f"seed 7 stalled: nothing moved to the receiver for {STALL_SECONDS:g} s "
                      f"(SeedStallTimeoutSeconds): the connection carried nothing for {silence:g} s",
                      str(sent.exception))
        self.assertEqual((self.sending.state, self.receiving.state), ("failed", "failed"))
        self.assertEqual(os.listdir(self.target), [])  # the staging directory is gone
        await self._no_seed_threads()

    @inline
    async def test_a_link_stalled_for_good_fails_in_time_saying_so(self):
        await self._stalled_for_good(tls=False)

    @inline
    async def test_a_link_stalled_for_good_over_tls_fails_in_time_saying_so(self):
        await self._stalled_for_good(tls=True)
