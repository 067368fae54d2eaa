"""Seeds that survive dropped connections, both sides in this process, through a relay on loopback.

The sender sends to a :class:`SlowLink` (a relay thread) forwarding to the receiver; ``cut()``
drops every connection through it, as a relay killed and restarted does.  Trees must arrive
identical with the re-sent amount small, a drop that nobody resumes must fail cleanly, and an
abort while the sides wait to reconnect must leave nothing behind.
"""

from __future__ import annotations

import os
import threading

from twisted.internet import reactor, threads
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from orchagent.seed import authentication
from orchagent.seed.protocol import TransferFailed
from orchagent.seed.receiver import SeedReceiverServer
from orchagent.seed.sender import send_tree
from orchagent.tls import client_creator, seed_server_options
from orchagent.config import Config
from testbed.pki import CertificateAuthority
from testbed.seed_link import SlowLink
from tests.support.deferreds import inline
from tests.support.seed_trees import build_tree, describe_tree

SECRET = b"resume tests' secret"
MB = 1024 * 1024
LINK_RATE = 64 * MB


def seed_threads() -> list[str]:
    """The seed engine's threads still alive: workers, the writer's disk and sync threads."""
    return [t.name for t in threading.enumerate() if t.name.startswith("seed-")]


class LinkedSeed(TestCase):
    """A seed between a receiver and a sender in this process, through a :class:`SlowLink`."""

    timeout = 120

    async def _start(self, stall_timeout: float = 10, tls: bool = False, big_files: int = 16 * MB, streams: int = 1,
                     max_bytes_per_second: int = 0, big_count: int = 3):
        """A tree (``big_count`` ``big_files`` of random data, and build_tree's awkward entries) seeding through
        the link over ``streams`` connections."""
        base = self.mktemp()
        self.source, self.target = os.path.join(base, "source"), os.path.join(base, "target")
        build_tree(self.source, big_bytes=8 * MB, small_files=300)
        for i in range(big_count):
            with open(os.path.join(self.source, "db one", f"big{i}.ibd"), "wb") as f:
                f.write(os.urandom(big_files + i))
        os.makedirs(self.target)
        server_tls = client_tls = None
        if tls:
            ca = CertificateAuthority(self.mktemp())
            receiver = ca.issue("receiver")
            server_tls = seed_server_options(Config(use_ssl=True, ssl_cert_file=receiver.cert,
                                                    ssl_private_key_file=receiver.key, ssl_ca_file=ca.cert))
            client_tls = client_creator(Config(use_ssl=True, ssl_ca_file=ca.cert), "localhost")
        self.server = SeedReceiverServer(reactor, secret=SECRET, stall_timeout=stall_timeout, tls=server_tls)
        port = await self.server.listen(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))
        self.addCleanup(self.server.stopListening)
        self.server_port = port.getHost().port
        self.link = SlowLink("127.0.0.1", self.server_port, rate=LINK_RATE, buffer_bytes=256 * 1024)
        self.addCleanup(threads.deferToThread, self.link.close)
        self.receiving = self.server.arm("7", self.target)
        self.sending = send_tree(reactor, "127.0.0.1", self.link.port, "7", self.source, secret=SECRET,
                                 tls=client_tls, stall_timeout=stall_timeout, streams=streams,
                                 max_bytes_per_second=max_bytes_per_second)

    async def _until(self, condition, what: str, seconds: float = 30) -> None:
        for _ in range(int(seconds / 0.005)):
            if condition():
                return
            await deferLater(reactor, 0.005)
        self.fail(f"timed out waiting for {what}: receiver {self.receiving.state} {self.receiving.progress}, "
                  f"sender {self.sending.state} {self.sending.progress}")

    async def _no_seed_threads(self) -> None:
        """A worker's last act is to tell the reactor it ended: it is gone a moment later."""
        await self._until(lambda: not seed_threads(), "the seed's threads to end", seconds=2)

    async def _cut_at(self, fraction: float) -> None:
        """Drop the connection once the receiver has ``fraction`` of the data; wait for the resume."""
        resumes = self.receiving.progress.resumes
        progress = self.receiving.progress
        await self._until(lambda: progress.bytes_done >= fraction * (progress.bytes_total or 1e18),
                          f"{fraction:.0%} of the data")
        await threads.deferToThread(self.link.cut)
        await self._until(lambda: self.receiving.progress.resumes > resumes and self.sending.progress.resumes > resumes,
                          "the resume")



class ResumeTests(LinkedSeed):
    """A seed cut twice mid-transfer arrives whole; only the sender with the secret resumes, one at a
    time; a drop nobody resumes fails; an abort while waiting leaves no thread, connection or staging file."""

    async def _cut_twice_and_compare(self, tls: bool) -> None:
        await self._start(tls=tls, big_files=56 * MB)  # about 200 MB, so a tenth is well above the 2 drops' cost
        await self._cut_at(0.25)
        await self._cut_at(0.6)
        await self.sending.when_done()
        await self.receiving.when_done()
        self.assertEqual(describe_tree(self.target), describe_tree(self.source))
        total = self.receiving.progress.bytes_total
        for transfer in (self.sending, self.receiving):
            progress = transfer.progress
            self.assertEqual((transfer.state, progress.resumes), ("succeeded", 2))
            self.assertEqual((progress.bytes_done, progress.files_done), (total, progress.files_total))
            self.assertLess(progress.resent_bytes, total / 10, (transfer.role, progress))
        self.assertGreater(self.sending.progress.resent_bytes, 0)
        self.assertEqual(self.link.connections, 3)

    @inline
    async def test_a_seed_cut_twice_arrives_whole(self):
        await self._cut_twice_and_compare(tls=False)

    @inline
    async def test_a_seed_cut_twice_over_tls_arrives_whole(self):
        await self._cut_twice_and_compare(tls=True)

    @inline
    async def test_only_the_secrets_holder_can_resume_and_only_one_sender_at_a_time(self):
        await self._start()
        await self._until(lambda: self.receiving.progress.bytes_done > 0, "the first bytes")
        direct = self.server_port
        second = send_tree(reactor, "127.0.0.1", direct, "7", self.source, secret=SECRET)
        with self.assertRaises(TransferFailed) as refused:
            await second.when_done()
        self.assertIn("seed 7 is already receiving from another sender", str(refused.exception))
        await threads.deferToThread(self.link.cut)
        # before the sender's first attempt (a quarter of a second later), someone without the secret
        impostor = send_tree(reactor, "127.0.0.1", direct, "7", self.source, secret=b"not the secret")
        with self.assertRaises(TransferFailed) as impostor_refused:
            await impostor.when_done()
        self.assertIn(authentication.NOT_AUTHENTICATED, str(impostor_refused.exception))
        await self.sending.when_done()
        await self.receiving.when_done()
        self.assertIn("different SeedTransferSecret", self.receiving.last_refusal)
        self.assertEqual(describe_tree(self.target), describe_tree(self.source))
        self.assertEqual((self.sending.progress.resumes, self.receiving.progress.resumes), (1, 1))

    @inline
    async def test_a_drop_after_the_seed_arrived_whole_is_confirmed_on_reconnecting(self):
        await self._start()
        await self._until(lambda: self.receiving.state == "finishing", "the whole stream on the receiver")
        self.link.freeze()  # its DONE does not get through
        await self.receiving.when_done()
        self.assertEqual(self.sending.state, "finishing")
        await threads.deferToThread(self.link.cut)
        self.link.thaw()
        await self.sending.when_done()  # it reconnected, and heard DONE again
        self.assertEqual(self.link.connections, 2)
        self.assertEqual(describe_tree(self.target), describe_tree(self.source))

    @inline
    async def test_a_drop_nobody_resumes_fails_cleanly(self):
        await self._start(stall_timeout=1.5)
        await self._until(lambda: self.receiving.progress.bytes_done > 0, "the first bytes")
        await threads.deferToThread(self.link.close)  # killed, not restarted: reconnecting is refused
        with self.assertRaises(TransferFailed) as received:
            await self.receiving.when_done()
        self.assertIn("the connection ended before the sender finished the tree, and it did not reconnect within 1.5 s",
                      str(received.exception))
        with self.assertRaises(TransferFailed) as sent:
            await self.sending.when_done()
        self.assertIn("could not be resumed within 1.5 s (SeedStallTimeoutSeconds)", str(sent.exception))
        self.assertEqual(os.listdir(self.target), [])  # the staging directory is gone
        await self._no_seed_threads()

    @inline
    async def test_abort_while_waiting_to_reconnect_leaves_nothing(self):
        await self._start(stall_timeout=30)
        await self._until(lambda: self.receiving.progress.bytes_done > 0, "the first bytes")
        await threads.deferToThread(self.link.close)
        await self._until(lambda: self.receiving.state == "reconnecting" and self.sending.state == "reconnecting",
                          "both sides to wait for a reconnection")
        await self.sending.abort()
        await self.receiving.abort()
        self.assertEqual((self.sending.state, self.receiving.state), ("aborted", "aborted"))
        self.assertEqual(os.listdir(self.target), [])
        await self._no_seed_threads()
        await deferLater(reactor, 0.3)  # and nothing reconnects or writes later
        self.assertEqual(os.listdir(self.target), [])
