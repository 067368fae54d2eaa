"""The built-in seed transfer over real loopback TCP, both sides in this process."""

from __future__ import annotations

import os
import threading

import zstandard
from twisted.internet import reactor, threads
from twisted.internet.defer import DeferredList
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.task import deferLater
from twisted.protocols import portforward
from twisted.trial.unittest import TestCase

from orchagent.seed import authentication, compression, ordered, protocol
from orchagent.seed.protocol import TransferFailed
from orchagent.seed.receiver import SeedReceiverServer
from orchagent.seed.sender import send_tree
from tests.support.deferreds import inline
from tests.support.seed_tls import AGENTS_OU, agent_tls
from tests.support.seed_trees import allocated_bytes, build_tree, describe_tree

SECRET = b"correct horse battery staple"


class SeedTransferTests(TestCase):
    """The built-in transfer on loopback: trees arrive identical, and only an authenticated, armed sender gets in."""

    timeout = 60

    async def _listen(self, secret: bytes = SECRET, stall_timeout: float = 10, tls=None, sender_ous=()) -> int:
        self.server = SeedReceiverServer(reactor, secret=secret, stall_timeout=stall_timeout, tls=tls,
                                         sender_ous=sender_ous)
        port = await self.server.listen(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))
        self.addCleanup(self.server.stopListening)
        return port.getHost().port

    def _dirs(self) -> tuple[str, str]:
        base = self.mktemp()
        source, target = os.path.join(base, "source"), os.path.join(base, "target")
        build_tree(source)
        os.makedirs(target)
        return source, target

    @inline
    async def test_tree_arrives_identical(self):
        await self._transfer_and_compare()

    @inline
    async def test_tree_arrives_identical_over_tls(self):
        await self._transfer_and_compare(None, None, *self._agent_tls())

    @inline
    async def test_seeds_do_not_need_the_reactors_thread_pool(self):
        # A seed runs for hours: it must neither hold the pool's threads (the API's du and file
        # reads need them) nor wait for one.  Here all pool threads but one are busy all along.
        pool = reactor.getThreadPool()
        release = threading.Event()
        self.addCleanup(release.set)
        busy = [threads.deferToThread(release.wait) for _ in range(pool.max - 1)]  # one for name lookups
        await self._transfer_and_compare()
        release.set()
        await DeferredList(busy)

    @inline
    async def test_compressed_tree_arrives_identical(self):
        sending, receiving = await self._transfer_and_compare(compression="zstd")
        self.assertEqual((sending.progress.wire_bytes, sending.progress.data_bytes),
                         (receiving.progress.wire_bytes, receiving.progress.data_bytes))
        self.assertLess(sending.progress.wire_bytes, sending.progress.data_bytes * 0.8)  # ibdata1 compresses

    @inline
    async def test_incompressible_data_goes_raw_and_arrives_whole(self):
        await self._incompressible("zstd")

    @inline
    async def test_incompressible_data_goes_raw_and_arrives_whole_with_auto(self):
        await self._incompressible("auto")

    async def _incompressible(self, compression: str) -> None:
        base = self.mktemp()
        source, target = os.path.join(base, "source"), os.path.join(base, "target")
        os.makedirs(os.path.join(source, "db"))
        os.makedirs(target)
        for i in range(3):
            with open(os.path.join(source, "db", f"t{i}.ibd"), "wb") as f:
                f.write(os.urandom(3 * 1024 * 1024 + i))
        sending, receiving = await self._transfer_and_compare(source, target, compression=compression)
        self.assertEqual(receiving.progress.wire_bytes, receiving.progress.data_bytes)  # nothing compressed
        self.assertEqual(sending.progress.wire_bytes, receiving.progress.wire_bytes)
        self.assertEqual(receiving.progress.bytes_done, 3 * 3 * 1024 * 1024 + 3)

    async def _transfer_and_compare(self, source=None, target=None, server_tls=None, client_tls=None,
                                    compression="auto"):
        if source is None:
            source, target = self._dirs()
        port = await self._listen(tls=server_tls)
        receiving = self.server.arm("7", target)
        sending = send_tree(reactor, "127.0.0.1", port, "7", source, secret=SECRET, tls=client_tls,
                            compression=compression)
        await sending.when_done()
        await receiving.when_done()
        self.assertEqual(describe_tree(target), describe_tree(source))
        if os.path.exists(os.path.join(source, "sparse.ibd")):
            self.assertLess(allocated_bytes(os.path.join(target, "sparse.ibd")), 1024 * 1024)
        for transfer in (sending, receiving):
            self.assertEqual(transfer.state, "succeeded")
            self.assertEqual(transfer.progress.files_done, transfer.progress.files_total)
            self.assertEqual(transfer.progress.bytes_done, transfer.progress.bytes_total)
        return sending, receiving

    @inline
    async def test_thousands_of_empty_files_arrive(self):
        # one batch then holds more frames than one sendmsg may carry (IOV_MAX)
        await self._empty_files_arrive()

    @inline
    async def test_thousands_of_empty_files_arrive_over_tls(self):
        # their frames are joined into records, not encrypted one by one
        await self._empty_files_arrive(*self._agent_tls())

    async def _empty_files_arrive(self, server_tls=None, client_tls=None):
        base = self.mktemp()
        source, target = os.path.join(base, "source"), os.path.join(base, "target")
        os.makedirs(os.path.join(source, "db"))
        os.makedirs(target)
        for i in range(1200):  # about 2400 frames
            open(os.path.join(source, "db", f"t{i}.frm"), "wb").close()
        port = await self._listen(tls=server_tls)
        receiving = self.server.arm("7", target)
        sending = send_tree(reactor, "127.0.0.1", port, "7", source, secret=SECRET, tls=client_tls)
        await sending.when_done()
        await receiving.when_done()
        self.assertEqual(describe_tree(target), describe_tree(source))

    async def _refused(self, sender_secret: bytes, arm: bool, client_tls=None, **listen) -> str:
        """Sends a tree that the receiver must refuse; returns the sender's error, or the
        receiver's detail (``last_refusal``) when a receive is armed."""
        source, target = self._dirs()
        port = await self._listen(**listen)
        receiving = self.server.arm("7", target) if arm else None
        sending = send_tree(reactor, "127.0.0.1", port, "7", source, secret=sender_secret, tls=client_tls)
        with self.assertRaises(TransferFailed) as caught:
            await sending.when_done()
        self.assertEqual(sending.state, "failed")
        self.assertEqual(os.listdir(target), [])
        if receiving is not None:
            self.assertFalse(receiving.done)  # a stray peer cannot cancel an armed receive
            self.assertIn("SeedTransferValidOUs" if listen.get("sender_ous") else "SeedTransferSecret",
                          receiving.last_refusal)
            await receiving.abort()
            self.assertIn(authentication.NOT_AUTHENTICATED, str(caught.exception))  # the sender is not told which
            return receiving.last_refusal
        return str(caught.exception)

    def _agent_tls(self, sender_ou: str | None = None, check_senders: bool = False) -> tuple[object, object]:
        return agent_tls(self.mktemp(), sender_ou, check_senders)

    async def _refused_by_certificate(self, sender_ou: str | None) -> str:
        server_tls, client_tls = self._agent_tls(sender_ou, check_senders=True)
        return await self._refused(b"", arm=True, client_tls=client_tls, secret=b"", tls=server_tls,
                                   sender_ous=(AGENTS_OU,))

    @inline
    async def test_sender_authenticated_by_its_certificate_alone(self):
        server_tls, client_tls = self._agent_tls(sender_ou=AGENTS_OU, check_senders=True)
        source, target = self._dirs()
        port = await self._listen(secret=b"", tls=server_tls, sender_ous=(AGENTS_OU,))
        receiving = self.server.arm("7", target)
        sending = send_tree(reactor, "127.0.0.1", port, "7", source, secret=b"", tls=client_tls)
        await sending.when_done()
        await receiving.when_done()
        self.assertEqual(describe_tree(target), describe_tree(source))

    @inline
    async def test_sender_without_a_certificate_is_refused(self):
        message = await self._refused_by_certificate(sender_ou=None)
        self.assertIn("presented no client certificate", message)
        self.assertIn("SSLCertFile", message)

    @inline
    async def test_sender_certificate_with_another_ou_is_refused(self):
        message = await self._refused_by_certificate(sender_ou="web-servers")
        self.assertIn("no OU from SeedTransferValidOUs (its OUs: web-servers)", message)

    def test_a_receiver_needs_a_secret_or_sender_certificates_over_tls(self):
        with self.assertRaises(ValueError):
            SeedReceiverServer(reactor, secret=b"", tls=None)
        with self.assertRaises(ValueError):
            SeedReceiverServer(reactor, secret=b"", tls=None, sender_ous=(AGENTS_OU,))

    @inline
    async def test_wrong_secret_is_refused_and_nothing_is_written(self):
        message = await self._refused(b"not the secret", arm=True)
        self.assertIn("different SeedTransferSecret", message)

    @inline
    async def test_unarmed_seed_is_refused(self):
        message = await self._refused(SECRET, arm=False)
        self.assertIn("refused seed 7: no receive is armed for seed 7", message)

    @inline
    async def test_armed_receive_fails_when_no_sender_authenticates(self):
        source, target = os.path.join(self.mktemp(), "source"), self.mktemp()
        os.makedirs(source)
        os.makedirs(target)
        port = await self._listen(stall_timeout=0.5)
        receiving = self.server.arm("7", target)
        sending = send_tree(reactor, "127.0.0.1", port, "7", source, secret=b"not the secret")
        with self.assertRaises(TransferFailed):
            await sending.when_done()
        with self.assertRaises(TransferFailed) as caught:
            await receiving.when_done()
        self.assertEqual(receiving.state, "failed")
        self.assertIn("no sender authenticated for seed 7 within 0.5 s; last refused a sender from 127.0.0.1:",
                      str(caught.exception))
        self.assertIn("different SeedTransferSecret", str(caught.exception))
        self.assertEqual(os.listdir(target), [])

    @inline
    async def test_abort_mid_transfer_leaves_nothing(self):
        await self._abort_mid_transfer()

    @inline
    async def test_abort_mid_transfer_over_tls_leaves_nothing(self):
        await self._abort_mid_transfer(*self._agent_tls())

    @inline
    async def test_abort_while_compressing_leaves_no_compressing_thread(self):
        await self._abort_mid_transfer(compression="zstd")
        for _ in range(200):  # the reader thread closes its pool as it ends
            if not [t for t in threading.enumerate() if t.name.startswith(ordered.THREAD_NAME)]:
                break
            await deferLater(reactor, 0.01)
        self.assertEqual([t.name for t in threading.enumerate() if t.name.startswith(ordered.THREAD_NAME)], [])

    async def _abort_mid_transfer(self, server_tls=None, client_tls=None, compression="auto"):
        base = self.mktemp()
        source, target = os.path.join(base, "source"), os.path.join(base, "target")
        build_tree(source, big_bytes=256 * 1024 * 1024, small_files=5)
        os.makedirs(target)
        port = await self._listen(tls=server_tls)
        receiving = self.server.arm("7", target)
        sending = send_tree(reactor, "127.0.0.1", port, "7", source, secret=SECRET, tls=client_tls,
                            compression=compression)
        while receiving.progress.bytes_done == 0:
            await deferLater(reactor, 0.001)
        self.assertLess(receiving.progress.bytes_done, receiving.progress.bytes_total)
        await receiving.abort()
        self.assertEqual(receiving.state, "aborted")
        self.assertEqual(os.listdir(target), [])  # staging removed, no writer left to recreate it
        with self.assertRaises(TransferFailed):
            await sending.when_done()
        self.assertEqual(sending.state, "failed")
        await deferLater(reactor, 0.05)
        self.assertEqual(os.listdir(target), [])

    @inline
    async def test_stalled_sender_times_out(self):
        base = self.mktemp()
        target = os.path.join(base, "target")
        os.makedirs(target)
        port = await self._listen(stall_timeout=0.5)
        receiving = self.server.arm("7", target)
        silent = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), SilentSender("7"))
        self.addCleanup(silent.transport.loseConnection)
        with self.assertRaises(TransferFailed) as caught:
            await receiving.when_done()
        self.assertIn("stalled: the sender did not send data for 0.5 seconds", str(caught.exception))
        self.assertEqual(os.listdir(target), [])

    @inline
    async def test_corruption_is_detected_and_nothing_is_left(self):
        await self._corrupted(CORRUPT_MARKER, "none", "'marked' is not authentic")

    @inline
    async def test_corruption_of_a_compressed_block_is_detected_and_nothing_is_left(self):
        # The MAC covers the data as written: a changed compressed byte fails the file, whether
        # zstd notices (a corrupt block) or decompresses it to other data (not authentic).
        compressed = zstandard.ZstdCompressor(level=compression.LEVEL).compress(CORRUPT_MARKER * 2000)
        self.assertLess(len(compressed), 200)
        await self._corrupted(compressed[len(compressed) // 2:], "zstd", "'marked'")

    async def _corrupted(self, marker: bytes, compression: str, error: str):
        source, target = self._dirs()
        with open(os.path.join(source, "marked"), "wb") as f:
            f.write(CORRUPT_MARKER * 2000)
        port = await self._listen()
        receiving = self.server.arm("7", target)
        proxy = CorruptingProxy(port, marker)
        listening = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(proxy)
        self.addCleanup(listening.stopListening)
        sending = send_tree(reactor, "127.0.0.1", listening.getHost().port, "7", source, secret=SECRET,
                            compression=compression)
        with self.assertRaises(TransferFailed) as caught:
            await receiving.when_done()
        self.assertTrue(proxy.flipped)
        self.assertIn(error, str(caught.exception))
        with self.assertRaises(TransferFailed) as sender_side:
            await sending.when_done()
        self.assertIn(error, str(sender_side.exception))
        self.assertEqual(os.listdir(target), [])


CORRUPT_MARKER = b"flip one byte of me, please... "


class SilentSender(Protocol):
    """Authenticates correctly, then sends nothing."""

    def __init__(self, seed_id: str) -> None:
        self._seed_id = seed_id
        self._frames = protocol.FrameBuffer()

    def dataReceived(self, data: bytes) -> None:
        self._frames.feed(data)
        for kind, payload in self._frames.frames():
            if kind == protocol.Kind.HELLO:
                nonce = authentication.parse_hello(payload)
                session = authentication.Session.derive(SECRET, self._seed_id, nonce, authentication.new_nonce())
                self.transport.write(authentication.auth(session))


class CorruptingProxy(ServerFactory):
    """Forwards to the receiver, changing one byte of the first marker seen in the stream, or
    (``after_bytes``, for TLS, where no marker shows) the byte after so many."""

    def __init__(self, port: int, marker: bytes = CORRUPT_MARKER, after_bytes: int | None = None) -> None:
        self._port = port
        self.marker = marker
        self.after_bytes = after_bytes
        self.forwarded = 0
        self.flipped = False

    def where(self, data: bytes) -> int | None:
        """Where in ``data``, the next bytes towards the receiver, to change a byte (None: not here)."""
        if self.after_bytes is None:
            return data.index(self.marker) if self.marker in data else None
        at = self.after_bytes - self.forwarded
        self.forwarded += len(data)
        return at if 0 <= at < len(data) else None

    def buildProtocol(self, addr):
        return _ProxyServer(self)


class _ProxyServer(portforward.ProxyServer):
    def __init__(self, factory: CorruptingProxy) -> None:
        self._corrupting = factory

    def connectionMade(self) -> None:
        self.transport.pauseProducing()
        client = portforward.ProxyClientFactory()
        client.setServer(self)
        reactor.connectTCP("127.0.0.1", self._corrupting._port, client)

    def dataReceived(self, data: bytes) -> None:
        at = None if self._corrupting.flipped else self._corrupting.where(data)
        if at is not None:
            data = data[:at] + bytes([data[at] ^ 0x20]) + data[at + 1:]
            self._corrupting.flipped = True
        super().dataReceived(data)
