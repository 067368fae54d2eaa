"""The seed throttle: the source's rate follows SeedMaxBytesPerSecond and the seed-throttle route,
changed mid-seed, and the seed still arrives whole and verified.

Between two real agents (plain TCP: the sending thread paces), serving plain directories
(``MySQLDatadirCommand: echo <dir>``, MySQL reported stopped), so the source sends its datadir
itself; and over TLS with both engine sides in this process (the sending thread paces there too,
as it encrypts).  The data is
incompressible and loopback moves hundreds of MB/s unthrottled, so any rate measured here is the
throttle's.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from orchagent.config import Config
from orchagent.seed.receiver import SeedReceiverServer
from orchagent.seed.sender import send_tree
from orchagent.seed.throttle import minimum_rate
from orchagent.tls import client_creator, seed_server_options
from testbed.agent import free_port, start_agent
from testbed.orchestrator import HostAgent, Orchestrator
from testbed.seeding import directory_agent_settings
from testbed.pki import CertificateAuthority
from tests.support.deferreds import inline

MB = 1024 * 1024
SOURCE_ADDRESS, TARGET_ADDRESS = "127.0.0.1", "127.0.0.2"
SECRET = "throttle tests' shared secret"
DATA_BYTES = 64 * MB
FIRST_RATE, SECOND_RATE = 4 * MB, 16 * MB


def digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class SeedThrottleTests(SynchronousTestCase):
    """A running seed moves at SeedMaxBytesPerSecond, follows seed-throttle within a second or two,
    completes verified; the route refuses what it cannot do."""

    def setUp(self):
        if os.geteuid() != 0:
            self.skipTest("the built-in receive gives files to the datadir's owner: needs root (CI runs as root)")
        self.directory = tempfile.mkdtemp(prefix="orchagent-throttle-")
        self.addCleanup(shutil.rmtree, self.directory, ignore_errors=True)
        self.source_dir = os.path.join(self.directory, "source-datadir")
        self.target_dir = os.path.join(self.directory, "target-datadir")
        os.makedirs(os.path.join(self.source_dir, "db"))
        os.makedirs(self.target_dir)
        with open(os.path.join(self.source_dir, "db", "t.ibd"), "wb") as f:
            f.write(os.urandom(DATA_BYTES))
        seed_port = free_port(TARGET_ADDRESS)
        self.agents = []
        for address, datadir in ((SOURCE_ADDRESS, self.source_dir), (TARGET_ADDRESS, self.target_dir)):
            directory = os.path.join(self.directory, address)
            settings = directory_agent_settings(directory, datadir, seed_port, SECRET, SeedStallTimeoutSeconds=10,
                                                SeedMaxBytesPerSecond=FIRST_RATE)
            agent = start_agent(settings, address=address, directory=directory)
            self.addCleanup(agent.stop)
            self.agents.append(HostAgent.of(agent))
        self.source, self.target = self.agents
        self.orchestrator = Orchestrator()

    def call(self, agent: HostAgent, command: str, status: int = 200):
        answer = self.orchestrator.command(agent, command)
        self.assertEqual(answer.status, status, (command, answer.body))
        return answer.json()

    def rate(self, seconds: float) -> float:
        """The source's bytes per second over the next ``seconds``, from its seed-status."""
        before, started = self.call(self.source, "seed-status/1")["BytesDone"], time.monotonic()
        time.sleep(seconds)
        after, ended = self.call(self.source, "seed-status/1")["BytesDone"], time.monotonic()
        return (after - before) / (ended - started)

    def test_the_rate_follows_a_change_mid_seed_and_the_seed_completes_verified(self):
        self.call(self.target, "receive-mysql-seed-data/1")
        self.call(self.source, f"send-mysql-seed-data/{TARGET_ADDRESS}/1")
        deadline = time.monotonic() + 10
        while not self.call(self.source, "seed-status/1")["BytesDone"] and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # past the first batches' burst
        first = self.rate(2)
        self.assertTrue(2.5 * MB < first < 6 * MB, f"{first / MB:.2f} MB/s under a 4 MB/s limit")
        self.assertEqual(self.call(self.source, "seed-status/1")["MaxBytesPerSecond"], FIRST_RATE)

        self.assertTrue(self.call(self.source, f"seed-throttle/1?bytesPerSecond={SECOND_RATE}"))
        time.sleep(0.5)
        second = self.rate(1.5)
        self.assertTrue(10 * MB < second < 24 * MB, f"{second / MB:.2f} MB/s after raising the limit to 16 MB/s")
        self.assertEqual(self.call(self.source, "seed-status/1")["MaxBytesPerSecond"], SECOND_RATE)
        # the target does not pace: it says where to throttle
        refusal = self.call(self.target, f"seed-throttle/1?bytesPerSecond={SECOND_RATE}", status=409)
        self.assertIn("source", refusal["Message"])
        # too slow for the 10 s stall timer: refused, the limit stays
        refusal = self.call(self.source, "seed-throttle/1?bytesPerSecond=1000", status=400)
        self.assertIn("SeedStallTimeoutSeconds", refusal["Message"])

        deadline = time.monotonic() + 15
        while not self.call(self.target, "seed-command-completed/1") and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertTrue(self.call(self.target, "seed-command-succeeded/1"), self.call(self.target, "seed-status/1"))
        self.assertEqual(digest(os.path.join(self.target_dir, "db", "t.ibd")),
                         digest(os.path.join(self.source_dir, "db", "t.ibd")))
        # a finished seed, an unknown one and bad values are refused, and change nothing
        self.assertIn("succeeded", self.call(self.source, "seed-throttle/1?bytesPerSecond=0", status=409)["Message"])
        self.call(self.source, "seed-throttle/2?bytesPerSecond=0", status=404)
        for value in ("fast", "-1", ""):
            message = self.call(self.source, "seed-throttle/1?bytesPerSecond=" + value, status=400)["Message"]
            self.assertIn("bytesPerSecond", message)
        self.assertEqual(self.call(self.source, "seed-status/1")["MaxBytesPerSecond"], SECOND_RATE)


class EngineThrottleTests(TestCase):
    """Both engine sides in this process: over TLS the sending thread holds the pace and follows a change;
    at the lowest rate a stall timer allows, the seed does not stall (no connection dropped as silent)."""

    timeout = 30

    def trees(self, size: int, files: int = 1) -> tuple[str, str]:
        """A source of ``files`` random files of ``size`` bytes (db/t.ibd, db/t1.ibd, ...) and an empty target."""
        base = self.mktemp()
        source, target = os.path.join(base, "source"), os.path.join(base, "target")
        os.makedirs(os.path.join(source, "db"))
        os.makedirs(target)
        for i in range(files):
            with open(os.path.join(source, "db", f"t{i or ''}.ibd"), "wb") as f:
                f.write(os.urandom(size))
        return source, target

    def tls_options(self) -> tuple[object, object]:
        """The receiver's and the sender's TLS options, from a new CA."""
        ca = CertificateAuthority(self.mktemp())
        issued = ca.issue("receiver")
        return (seed_server_options(Config(use_ssl=True, ssl_cert_file=issued.cert, ssl_private_key_file=issued.key,
                                           ssl_ca_file=ca.cert)),
                client_creator(Config(use_ssl=True, ssl_ca_file=ca.cert), "localhost"))

    async def _at_the_slowest_rate(self, tls: bool = False, streams: int = 1) -> None:
        stall = 2  # seconds: the minimum rate is then 2 MiB/s a stream, a pause of about half a second per batch
        source, target = self.trees(6 * MB, files=streams)
        server_tls, client_tls = self.tls_options() if tls else (None, None)
        server = SeedReceiverServer(reactor, secret=SECRET.encode(), stall_timeout=stall, tls=server_tls)
        port = (await server.listen(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))).getHost().port
        self.addCleanup(server.stopListening)
        receiving = server.arm("7", target)
        started = reactor.seconds()
        sending = send_tree(reactor, "127.0.0.1", port, "7", source, secret=SECRET.encode(), tls=client_tls,
                            stall_timeout=stall, max_bytes_per_second=minimum_rate(stall, streams), streams=streams,
                            compression="none")
        self.addCleanup(sending.abort)
        await sending.when_done()
        await receiving.when_done()
        self.assertGreater(reactor.seconds() - started, 2)  # it was paced: 6 MB a stream at 2 MiB/s, less the burst
        for name in os.listdir(os.path.join(source, "db")):
            self.assertEqual(digest(os.path.join(target, "db", name)), digest(os.path.join(source, "db", name)))
        # the pauses (a quarter of the stall timer) are no stall: no side dropped the connection as silent
        self.assertEqual((sending.progress.resumes, receiving.progress.resumes), (0, 0))

    @inline
    async def test_the_slowest_rate_allowed_keeps_inside_the_stall_timer(self):
        await self._at_the_slowest_rate(tls=False)

    @inline
    async def test_the_slowest_rate_allowed_keeps_each_of_several_streams_inside_the_stall_timer(self):
        # they share the limit, each in turn: a stream waits for a batch of every other one
        await self._at_the_slowest_rate(streams=3)

    @inline
    async def test_the_slowest_rate_allowed_keeps_inside_the_stall_timer_over_tls(self):
        # no keepalives while the workers hold the TLS connection: only their socket timeouts watch it
        await self._at_the_slowest_rate(tls=True)

    @inline
    async def test_the_reactor_paces_and_a_lifted_limit_lets_the_rest_go_at_once(self):
        source, target = self.trees(24 * MB)
        server_tls, client_tls = self.tls_options()
        server = SeedReceiverServer(reactor, secret=SECRET.encode(), stall_timeout=10, tls=server_tls)
        port = (await server.listen(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))).getHost().port
        self.addCleanup(server.stopListening)
        receiving = server.arm("7", target)
        sending = send_tree(reactor, "127.0.0.1", port, "7", source, secret=SECRET.encode(),
                            tls=client_tls, stall_timeout=10, max_bytes_per_second=FIRST_RATE)
        self.addCleanup(sending.abort)
        await deferLater(reactor, 0.5, lambda: None)
        before = sending.progress.bytes_done
        await deferLater(reactor, 2, lambda: None)
        rate = (sending.progress.bytes_done - before) / 2
        self.assertTrue(2.5 * MB < rate < 6 * MB, f"{rate / MB:.2f} MB/s under a 4 MB/s limit")
        sending.limit_rate(0)
        self.assertEqual(sending.max_bytes_per_second, 0)
        started = reactor.seconds()
        await sending.when_done()
        await receiving.when_done()
        self.assertLess(reactor.seconds() - started, 5)  # about 13 MB left: unthrottled, well under a second
        self.assertEqual(digest(os.path.join(target, "db", "t.ibd")), digest(os.path.join(source, "db", "t.ibd")))
