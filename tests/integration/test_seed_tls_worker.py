"""TLS's data phase in the worker threads (:mod:`orchagent.seed.tlschannel`), both sides in this process.

The reactor is out of the data path; the connection goes back to Twisted's TLS layer whole at the
stream's end (the DONE frame gets through); an end at any moment of the stream leaves no thread,
no connection and nothing in the target.
"""

from __future__ import annotations

import os
import threading
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import TestCase

from orchagent.seed import tlschannel
from orchagent.seed.protocol import TransferFailed
from orchagent.seed.receiver import SeedReceiverServer
from orchagent.seed.sender import send_tree
from testbed.seed_link import SlowLink
from tests.integration.test_seed_transfer import CorruptingProxy
from tests.support.deferreds import inline
from tests.support.seed_tls import agent_tls
from tests.support.seed_trees import build_tree, describe_tree

SECRET = b"tls worker tests' secret"
MB = 1024 * 1024


class TlsDataPhaseTests(TestCase):
    timeout = 60

    def setUp(self):
        self.server_tls, self.client_tls = agent_tls(self.mktemp())
        base = self.mktemp()
        self.source, self.target = os.path.join(base, "source"), os.path.join(base, "target")
        os.makedirs(self.target)

    async def _start(self, big_bytes: int = 64 * MB, link_rate: float | None = None,
                     corrupt_after: int | None = None, stall_timeout: float = 10):
        """A TLS seed of a tree with one ``big_bytes`` file, through a :class:`SlowLink` at
        ``link_rate``, or a :class:`CorruptingProxy` changing the byte after ``corrupt_after``, when
        given; returns (sending, receiving, the link or proxy or None)."""
        build_tree(self.source, big_bytes=big_bytes, small_files=20)
        self.server = SeedReceiverServer(reactor, secret=SECRET, stall_timeout=stall_timeout, tls=self.server_tls)
        port = (await self.server.listen(_loopback())).getHost().port
        self.addCleanup(self.server.stopListening)
        link = None
        if link_rate is not None:
            link = SlowLink("127.0.0.1", port, rate=link_rate)
            self.addCleanup(link.close)
            port = link.port
        if corrupt_after is not None:
            link = CorruptingProxy(port, after_bytes=corrupt_after)
            relay = await _loopback().listen(link)
            self.addCleanup(relay.stopListening)
            port = relay.getHost().port
        receiving = self.server.arm("7", self.target)
        # uncompressed: the wire counts these tests compare must not hang on SeedCompression auto's choices
        sending = send_tree(reactor, "127.0.0.1", port, "7", self.source, secret=SECRET, tls=self.client_tls,
                            stall_timeout=stall_timeout, compression="none")
        return sending, receiving, link

    async def _streaming(self, receiving) -> None:
        while receiving.progress.bytes_done == 0:
            await deferLater(reactor, 0.001)

    async def _nothing_left(self, sending, receiving) -> None:
        """Both ended; no seed thread, no seed connection, nothing in the target."""
        for transfer in (sending, receiving):
            try:
                await transfer.when_done()
            except TransferFailed:
                pass
        for thread in threading.enumerate():
            if thread.name in ("seed-send-7", "seed-receive-7"):
                thread.join(5)  # when_done fired after its last call into the reactor
                self.assertFalse(thread.is_alive(), thread.name)
        for _ in range(500):  # a sender whose connection broke may have tried to resume: refused, closing
            if not self.server.connections.open:
                break
            await deferLater(reactor, 0.01)
        self.assertEqual(self.server.connections.open, 0)
        self.assertEqual(os.listdir(self.target), [])

    @inline
    async def test_data_moves_while_the_reactor_is_blocked(self):
        # Through Twisted's TLS layer nothing would move beyond the buffers (some 20 MB) while the
        # reactor thread sleeps; with the workers encrypting and decrypting, the stream goes on.
        sending, receiving, _ = await self._start(big_bytes=256 * MB)
        await self._streaming(receiving)
        before = receiving.progress.wire_bytes
        time.sleep(1.0)  # the reactor's thread, blocked
        moved = receiving.progress.wire_bytes - before
        await sending.when_done()
        await receiving.when_done()
        self.assertGreater(moved, 32 * MB)
        self.assertEqual(describe_tree(self.target), describe_tree(self.source))

    @inline
    async def test_the_done_frame_sent_while_the_worker_holds_the_connection_gets_through(self):
        # The receiver's DONE reaches the sender's socket before the sending thread gave the
        # connection back: Twisted's TLS layer must find it there, with nothing lost.
        sending, receiving, _ = await self._start(big_bytes=8 * MB)
        release = sending._release_channel
        held = []

        def release_later():
            held.append(receiving.concluded)  # the receiver may already have sent DONE
            reactor.callLater(0.5, release)

        sending._release_channel = release_later
        await sending.when_done()
        await receiving.when_done()
        self.assertEqual(sending.state, "succeeded")
        self.assertTrue(held)
        self.assertEqual(describe_tree(self.target), describe_tree(self.source))

    @inline
    async def test_receiver_abort_mid_stream_leaves_nothing(self):
        await self._abort_mid_stream(aborting="receiving")

    @inline
    async def test_sender_abort_mid_stream_leaves_nothing(self):
        await self._abort_mid_stream(aborting="sending")

    async def _abort_mid_stream(self, aborting: str):
        sending, receiving, _ = await self._start(link_rate=32 * MB)
        sides = {"sending": sending, "receiving": receiving}
        await self._streaming(receiving)
        await sides.pop(aborting).abort()
        await self._nothing_left(sending, receiving)
        self.assertEqual(sides.popitem()[1].state, "failed")
        self.assertEqual({sending.state, receiving.state}, {"aborted", "failed"})

    @inline
    async def test_the_sender_learns_why_the_receiver_failed_mid_stream(self):
        sending, receiving, _ = await self._start(big_bytes=128 * MB)
        await self._streaming(receiving)
        receiving.conclude(TransferFailed("the target disk caught fire"))
        with self.assertRaises(TransferFailed) as caught:
            await sending.when_done()
        self.assertIn("the target disk caught fire", str(caught.exception))
        await self._nothing_left(sending, receiving)

    @inline
    async def test_a_connection_cut_for_good_mid_stream_fails_both_sides(self):
        # The link goes away while the workers hold the connection: each gives it back broken,
        # the sender tries to resume until the stall timeout, the receiver waits as long.
        sending, receiving, link = await self._start(link_rate=32 * MB, stall_timeout=2)
        await self._streaming(receiving)
        link.close()
        await self._nothing_left(sending, receiving)
        self.assertEqual((sending.state, receiving.state), ("failed", "failed"))
        self.assertIn("could not be resumed", str(sending.error))
        self.assertIn("did not reconnect", str(receiving.error))

    @inline
    async def test_a_record_altered_on_the_wire_fails_the_seed_and_leaves_nothing(self):
        # The worker's TLS object rejects it (the record's tag), says so, and the connection,
        # given back broken, still ends on both sides.
        sending, receiving, proxy = await self._start(corrupt_after=8 * MB)
        with self.assertRaises(TransferFailed) as caught:
            await receiving.when_done()
        self.assertTrue(proxy.flipped)
        self.assertIn("the TLS connection failed", str(caught.exception))
        await self._nothing_left(sending, receiving)
        self.assertEqual(sending.state, "failed")

    @inline
    async def test_a_connection_is_idle_only_once_twisted_wrote_everything(self):
        # What lending waits for (tlschannel.idle), on this Twisted: a write still in Twisted's
        # TLS layer or TCP buffer makes the connection busy, until the reactor has written it.
        accepted = Deferred()

        class Accepting(Protocol):
            def connectionMade(self):
                accepted.callback(self)

        server = await _loopback().listen(TLSMemoryBIOFactory(self.server_tls, False, Factory.forProtocol(Accepting)))
        self.addCleanup(server.stopListening)
        endpoint = wrapClientTLS(self.client_tls, TCP4ClientEndpoint(reactor, "127.0.0.1", server.getHost().port))
        client = await connectProtocol(endpoint, Protocol())
        accepting = await accepted
        self.addCleanup(accepting.transport.abortConnection)
        self.addCleanup(client.transport.abortConnection)
        await deferLater(reactor, 0.2)  # the handshake, done
        self.assertTrue(tlschannel.idle(client.transport))
        for size in (1, 1_000_000):  # batched by Twisted's TLS layer (>= 22.8); past its batch
            client.transport.write(b"x" * size)
            self.assertFalse(tlschannel.idle(client.transport))
            await deferLater(reactor, 0.2)
            self.assertTrue(tlschannel.idle(client.transport))


def _loopback() -> TCP4ServerEndpoint:
    return TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
