"""Seeds whose connection stays open and goes silent (a frozen middlebox, a black-holed route), both
sides in this process, through the relay of test_seed_resume.py.

``link.stall()`` freezes the connections open at that moment for good (both ends stay open and hear
nothing, not even the other end's reset) while new connections pass: the side that notices the
silence drops the connection and the seed resumes over a new one.  With ``link.stall_after(n)``
new connections stall too once ``n`` bytes went through (0: at once, a black-holed route): the seed
then fails about ``SeedStallTimeoutSeconds`` after the link went silent, saying it stalled, with
nothing left behind.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.defer import gatherResults

from orchagent.seed.protocol import TransferFailed
from orchagent.seed.resumption import silence_limit
from orchagent.seed.sender import send_tree
from tests.integration.test_seed_resume import MB, SECRET, LinkedSeed
from tests.support.deferreds import inline
from tests.support.seed_trees import describe_tree

# Stall timers are this small so the tests stay fast; the receiver's keepalives then come every
# 0.75 s, and a connection silent for 1.5 s is dropped.
STALL_SECONDS = 3.0


class FileBackup:
    """A hot seed's running backup, as the sender's reader sees it: a stream to read (a file here)."""

    port = 3306

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDONLY)

    def ended(self) -> None:
        pass  # the "tool" succeeded

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class CountingExtractor:
    """The receiver's end of a hot seed: counts what it is handed instead of unpacking it."""

    source_port = None

    def __init__(self) -> None:
        self.received = 0
        self.aborted = False

    def start(self, directory: str, source_port: int) -> None:
        self.source_port = source_port

    def write(self, piece: memoryview) -> None:
        self.received += len(piece)

    def end(self) -> None:
        pass

    def prepare(self, directory: str, directory_fd: int, owner: tuple[int, int] | None) -> None:
        pass

    def abort(self) -> None:
        self.aborted = True


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
        self.link.stall_after(0)  # new connections get through no further than the relay either
        self.link.stall()  # and neither end hears the other's reset
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

    @inline
    async def test_a_hot_seed_that_stalls_fails_saying_so(self):
        # its backup stream cannot be sent again: the sender keeps the whole stall timer, then fails
        await self._start(stall_timeout=STALL_SECONDS)  # for the link and the receiver; this tree is not sent
        await self.sending.abort()
        await self.receiving.abort()
        stream = os.path.join(self.source, "db one", "big0.ibd")
        extractor = CountingExtractor()
        connections = self.link.connections
        receiving = self.server.arm("8", self.target, extractor)
        sending = send_tree(reactor, "127.0.0.1", self.link.port, "8", self.source, secret=SECRET,
                            stall_timeout=STALL_SECONDS, backup=FileBackup(stream))
        await self._until(lambda: extractor.received > 2 * MB, "the first bytes of the stream")
        self.link.stall()
        stalled = reactor.seconds()
        with self.assertRaises(TransferFailed) as sent:
            await sending.when_done()
        self.assertGreater(reactor.seconds() - stalled, STALL_SECONDS - 0.5)
        self.assertIn("seed 8 stalled: the receiver did not", str(sent.exception))
        self.assertIn(f"for {STALL_SECONDS:g} seconds", str(sent.exception))
        with self.assertRaises(TransferFailed) as received:
            await receiving.when_done()
        self.assertIn(f"seed 8 stalled: the sender did not send data for {STALL_SECONDS:g} seconds; a hot seed's "
                      "backup stream cannot be sent again", str(received.exception))
        self.assertEqual((sending.progress.resumes, receiving.progress.resumes), (0, 0))
        self.assertEqual(self.link.connections, connections + 1)  # no reconnection
        self.assertTrue(extractor.aborted)
        self.assertEqual(os.listdir(self.target), [])
        await self._no_seed_threads()

    @inline
    async def test_connections_that_stall_past_the_handshake_fail_the_seed_in_time(self):
        # a path that lets a handshake through but black-holes the data (as an MTU black hole does):
        # every new connection authenticates, then stalls; a seed that verifies nothing more fails
        # on the receiver at most one silence limit after SeedStallTimeoutSeconds, not never
        await self._start(stall_timeout=STALL_SECONDS, big_files=24 * MB)
        await self._until(lambda: self.receiving.progress.bytes_done > 4 * MB, "the first bytes")
        self.link.stall_after(1024)  # AUTH gets through, the stream does not
        self.link.stall()
        stalled = reactor.seconds()
        with self.assertRaises(TransferFailed) as received:
            await self.receiving.when_done()
        silence = silence_limit(STALL_SECONDS)
        self.assertLess(reactor.seconds() - stalled, STALL_SECONDS + silence + 1)
        self.assertIn("seed 7 stalled: the sender did not send data", str(received.exception))
        self.assertGreaterEqual(self.receiving.progress.resumes, 1)  # a new connection was accepted, and stalled
        with self.assertRaises(TransferFailed) as sent:
            await self.sending.when_done()
        # the source hears it at its next reconnection, one silence limit later
        self.assertLess(reactor.seconds() - stalled, STALL_SECONDS + 2 * silence + 1.5)
        self.assertIn("stalled", str(sent.exception))
        self.assertEqual(os.listdir(self.target), [])
        await self._no_seed_threads()
