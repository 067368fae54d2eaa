"""Seeds between two real agents over a shaped link, as between two database hosts (issue #14).

Each test runs both agents in a network namespace of its own whose loopback is shaped with
``tbf`` (100 or 200 Mbit/s), so the link, not this machine's disk, sets the pace: compression
must pay off on a real MariaDB datadir and cost nothing on incompressible data, the throttle
route must move the measured rate, a seed whose connection is cut twice (a relay killed and
restarted) must resume and finish, a MariaDB datadir must arrive whole over three streams and over
TLS while throttled and cut, and command mode (socat/tar) must work as before.  The
agents serve plain directories (``MySQLDatadirCommand: echo <dir>``, MySQL reported stopped),
so the source sends its datadir itself.  Nothing of the namespace outlives a test, failed or not.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time

from twisted.trial.reporter import TestResult
from twisted.trial.unittest import SynchronousTestCase

from orchagent.seed.throttle import minimum_rate
from testbed.agent import free_port, start_agent
from testbed.mariadb import MariaDBSandbox
from testbed.netns import network_namespace
from testbed.orchestrator import HostAgent, Orchestrator
from testbed.pki import CertificateAuthority
from testbed.seed_link import SlowLink
from testbed.seeding import directory_agent_settings, load_sample_data, socat_tar_commands, table_checksums
from tests.support.root import requires_root

MB = 1024 * 1024
SOURCE_ADDRESS, TARGET_ADDRESS = "127.0.0.1", "127.0.0.2"
SECRET = "network seed tests' shared secret"
STALL_SECONDS = 10


def namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout


def tree_digests(root: str) -> dict[str, str]:
    """Relative path -> sha256 of every regular file under ``root``."""
    digests = {}
    for directory, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                digests[os.path.relpath(path, root)] = hashlib.file_digest(f, "sha256").hexdigest()
    return digests


def write_random_tree(root: str, sizes: dict[str, int]) -> None:
    for relative, size in sizes.items():
        path = os.path.join(root, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(os.urandom(size))


@requires_root("network namespaces, qdiscs, MariaDB sandboxes and the built-in receive's chown")
class NetworkSeedTests(SynchronousTestCase):
    """Compression, streams, TLS, the throttle, resume and command mode between two agents over a shaped link,
    verified on the target."""

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="orchagent-netseed-")
        self.addCleanup(shutil.rmtree, self.directory, ignore_errors=True)
        self.source_dir = os.path.join(self.directory, "source-datadir")
        self.target_dir = os.path.join(self.directory, "target-datadir")
        self.orchestrator = Orchestrator()

    def start_agents(self, rate: str, relay: bool = False, tls: bool = False, **settings) -> tuple[HostAgent, HostAgent]:
        """A namespace shaped to ``rate`` with the source and target agents inside, serving the two datadirs;
        with ``relay``, the source sends through ``self.link``, a relay in the namespace too; with
        ``tls``, both agents use TLS (certificates of a throw-away CA), the API and the seed alike."""
        ca = CertificateAuthority(os.path.join(self.directory, "ca")) if tls else None
        if ca is not None:
            self.orchestrator = Orchestrator(ca_file=ca.cert)
        self.addCleanup(self.assert_namespace_removed)  # cleanups run last-in first-out: after its close
        self.net = network_namespace(self, rate=rate)
        seed_port = self.net.call(free_port, TARGET_ADDRESS)
        source_port = seed_port
        if relay:
            self.link = self.net.call(SlowLink, TARGET_ADDRESS, seed_port, buffer_bytes=256 * 1024)
            self.addCleanup(self.link.close)
            source_port = self.link.port
        agents = []
        for address, datadir, port in ((SOURCE_ADDRESS, self.source_dir, source_port),
                                        (TARGET_ADDRESS, self.target_dir, seed_port)):
            directory = os.path.join(self.directory, address)
            config = directory_agent_settings(directory, datadir, port, SECRET,
                                              SeedStallTimeoutSeconds=STALL_SECONDS, **settings)
            if ca is not None:
                issued = ca.issue(address, ips=(address,))
                config.update(UseSSL=True, SSLCertFile=issued.cert, SSLPrivateKeyFile=issued.key, SSLCAFile=ca.cert)
            agent = start_agent(config, address=address, directory=directory, namespace=self.net)
            self.addCleanup(agent.stop)
            agents.append(HostAgent.of(agent))
        return agents[0], agents[1]

    def assert_namespace_removed(self) -> None:
        """The namespace (and with it its qdisc) is gone once the test is over, passed or failed."""
        self.assertNotIn(self.net.name, namespaces())
        self.assertFalse(os.path.exists(f"/run/netns/{self.net.name}"))

    def call(self, agent: HostAgent, command: str, status: int = 200):
        """An API call from inside the namespace; its JSON answer."""
        answer = self.net.call(self.orchestrator.command, agent, command)
        self.assertEqual(answer.status, status, (command, answer.body))
        return answer.json()

    def start_seed(self, source: HostAgent, target: HostAgent, seed_id: int, wait_before_send: float = 0) -> None:
        self.call(target, f"receive-mysql-seed-data/{seed_id}")
        time.sleep(wait_before_send)  # command mode: the receiving socat must listen first
        self.call(source, f"send-mysql-seed-data/{TARGET_ADDRESS}/{seed_id}")

    def finish_seed(self, source: HostAgent, target: HostAgent, seed_id: int, timeout: float = 30) -> tuple[dict, dict]:
        """Wait for the target to complete; both sides' seed-status, after checking it succeeded."""
        deadline = time.monotonic() + timeout
        while not self.call(target, f"seed-command-completed/{seed_id}"):
            self.assertLess(time.monotonic(), deadline, self.call(target, f"seed-status/{seed_id}"))
            time.sleep(0.1)
        deadline = time.monotonic() + 5  # the source records its end just after the target's
        while not self.call(source, f"seed-command-completed/{seed_id}") and time.monotonic() < deadline:
            time.sleep(0.05)
        sent, received = self.call(source, f"seed-status/{seed_id}"), self.call(target, f"seed-status/{seed_id}")
        self.assertEqual((received["State"], sent["State"]), ("succeeded", "succeeded"), (sent, received))
        return sent, received

    def mariadb_datadirs(self) -> tuple[dict, MariaDBSandbox]:
        """A stopped MariaDB's datadir with sample tables as the source (their checksums), and a target
        server whose datadir is empty."""
        source_server = MariaDBSandbox(os.path.join(self.directory, "source-server"))
        self.source_dir = source_server.datadir
        source_server.start()
        try:
            load_sample_data(source_server, rows=2000)
            checksums = table_checksums(source_server)
        finally:
            source_server.stop()
        target_server = MariaDBSandbox(os.path.join(self.directory, "target-server"))
        self.target_dir = target_server.datadir
        os.makedirs(self.target_dir)
        return checksums, target_server

    def assert_target_starts_with(self, target_server: MariaDBSandbox, checksums: dict) -> None:
        target_server.start()
        self.addCleanup(target_server.stop)
        self.assertEqual(table_checksums(target_server), checksums)
        self.assertEqual(len(checksums), 4)

    def test_a_mariadb_datadir_compressed_over_100mbit_starts_with_the_sources_checksums(self):
        checksums, target_server = self.mariadb_datadirs()
        source, target = self.start_agents("100mbit", SeedCompression="auto", SeedParallelStreams=1)

        self.start_seed(source, target, 1)
        sent, received = self.finish_seed(source, target, 1)

        self.assert_target_starts_with(target_server, checksums)
        self.assertEqual((sent["Streams"], received["Streams"]), (1, 1))
        # InnoDB's system tablespace and redo log are mostly zeros: compression pays on this link
        for status in (sent, received):
            self.assertGreater(status["CompressionRatio"], 1.5, status)
            self.assertLess(status["WireBytes"], status["DataBytes"], status)
            # the data stream carries the files plus their names and metadata
            self.assertTrue(sent["BytesTotal"] <= status["DataBytes"] < 1.01 * sent["BytesTotal"], status)

    def test_a_mariadb_datadir_over_three_streams_arrives_whole(self):
        checksums, target_server = self.mariadb_datadirs()
        source, target = self.start_agents("1gbit", SeedParallelStreams=3)

        self.start_seed(source, target, 6)
        sent, received = self.finish_seed(source, target, 6)

        self.assertEqual(tree_digests(self.target_dir), tree_digests(self.source_dir))
        self.assertEqual((sent["Streams"], received["Streams"]), (3, 3))
        for status in (sent, received):
            self.assertEqual((status["BytesDone"], status["FilesDone"]), (status["BytesTotal"], status["FilesTotal"]))
        self.assert_target_starts_with(target_server, checksums)

    def test_a_mariadb_datadir_over_tls_throttled_and_cut_resumes_with_the_sources_checksums(self):
        checksums, target_server = self.mariadb_datadirs()
        rate = 16 * MB  # uncompressed, so the throttle paces the datadir's own bytes
        source, target = self.start_agents("1gbit", relay=True, tls=True, SeedParallelStreams=1,
                                           SeedCompression="none", SeedMaxBytesPerSecond=rate)

        started = time.monotonic()
        self.start_seed(source, target, 7)
        deadline = started + 30
        while (throttled := self.call(source, "seed-status/7"))["WireBytes"] < 12 * MB:
            self.assertLess(time.monotonic(), deadline, throttled)
            time.sleep(0.02)
        elapsed = time.monotonic() - started
        # the link moves 125 MB/s: only the throttle (one batch of credit at most) makes this take so long
        self.assertGreater(elapsed, 0.9 * (throttled["WireBytes"] - MB) / rate, throttled)
        self.link.cut()  # the relay killed and restarted: the TLS connection drops mid-seed
        while self.call(target, "seed-status/7")["Resumes"] == 0:
            self.assertLess(time.monotonic(), deadline, self.call(target, "seed-status/7"))
            time.sleep(0.02)
        self.assertTrue(self.call(source, "seed-throttle/7?bytesPerSecond=0"))  # the rest at the link's rate
        sent, received = self.finish_seed(source, target, 7)

        self.assertEqual((throttled["MaxBytesPerSecond"], sent["MaxBytesPerSecond"]), (rate, 0))
        for status in (sent, received):
            self.assertEqual(status["Resumes"], 1, status)
            self.assertLess(status["ResentBytes"], status["BytesTotal"] / 10, status)
        self.assertEqual(tree_digests(self.target_dir), tree_digests(self.source_dir))
        self.assert_target_starts_with(target_server, checksums)

    def test_incompressible_data_goes_raw_at_the_links_rate(self):
        write_random_tree(self.source_dir, {"db/t1.ibd": 12 * MB, "db/t2.ibd": 4 * MB, "db/small.frm": 4096})
        os.makedirs(self.target_dir)
        source, target = self.start_agents("100mbit", SeedCompression="auto")

        started = time.monotonic()
        self.start_seed(source, target, 2)
        sent, received = self.finish_seed(source, target, 2)
        seconds = time.monotonic() - started

        self.assertEqual(tree_digests(self.target_dir), tree_digests(self.source_dir))
        size = 16 * MB + 4096
        self.assertEqual((sent["BytesTotal"], received["BytesDone"]), (size, size), (sent, received))
        for status in (sent, received):
            self.assertTrue(size <= status["DataBytes"] < 1.01 * size, status)
            # raw blocks: the wire carries the data plus its frames' headers, nothing saved
            self.assertTrue(0.97 <= status["CompressionRatio"] <= 1.0, status)
            self.assertGreaterEqual(status["WireBytes"], status["DataBytes"], status)
        # 16 MiB at 12.5 MB/s: about 1.3 s; faster would mean the link was not in the way
        self.assertGreater(seconds, 0.8 * size / (100e6 / 8), seconds)

    def test_the_rate_follows_the_throttle_raised_mid_seed_on_a_200mbit_link(self):
        first_rate, second_rate = 2 * MB, 8 * MB
        self.assertGreaterEqual(first_rate, minimum_rate(STALL_SECONDS))
        write_random_tree(self.source_dir, {"db/t.ibd": 40 * MB})
        os.makedirs(self.target_dir)
        source, target = self.start_agents("200mbit", SeedMaxBytesPerSecond=first_rate)

        def rate(seconds: float) -> float:
            """The source's bytes per second over the next ``seconds``, from its seed-status."""
            before, started = self.call(source, "seed-status/3")["BytesDone"], time.monotonic()
            time.sleep(seconds)
            after, ended = self.call(source, "seed-status/3")["BytesDone"], time.monotonic()
            return (after - before) / (ended - started)

        self.start_seed(source, target, 3)
        deadline = time.monotonic() + 10
        while not self.call(source, "seed-status/3")["BytesDone"]:
            self.assertLess(time.monotonic(), deadline, "the seed did not start")
            time.sleep(0.05)
        time.sleep(0.5)  # past the first batches' burst
        first = rate(2)
        self.assertTrue(0.6 * first_rate < first < 1.5 * first_rate, f"{first / MB:.2f} MiB/s under 2 MiB/s")
        self.assertEqual(self.call(source, "seed-status/3")["MaxBytesPerSecond"], first_rate)

        self.assertTrue(self.call(source, f"seed-throttle/3?bytesPerSecond={second_rate}"))
        time.sleep(0.5)
        second = rate(1.5)
        # 8 MiB/s is a third of the link's 25 MB/s: the throttle, not the link, sets it
        self.assertTrue(0.6 * second_rate < second < 1.5 * second_rate, f"{second / MB:.2f} MiB/s under 8 MiB/s")
        self.assertEqual(self.call(source, "seed-status/3")["MaxBytesPerSecond"], second_rate)

        self.call(source, "seed-throttle/3?bytesPerSecond=0")  # the rest at the link's rate
        self.finish_seed(source, target, 3)
        self.assertEqual(tree_digests(self.target_dir), tree_digests(self.source_dir))

    def test_a_seed_cut_twice_resumes_and_sends_again_under_a_tenth(self):
        sizes = {f"db/t{i}.ibd": 48 * MB + i for i in range(3)}
        sizes.update({f"db/small{i}.frm": 8192 * i for i in range(64)})
        write_random_tree(self.source_dir, sizes)
        os.symlink("db/t0.ibd", os.path.join(self.source_dir, "link to t0"))
        os.makedirs(os.path.join(self.source_dir, "empty", "deeper"))
        os.makedirs(self.target_dir)
        source, target = self.start_agents("1gbit", relay=True, SeedParallelStreams=1)  # one connection to cut

        def arrived() -> float:
            """The part of the data the target has (0 until it knows the total)."""
            status = self.call(target, "seed-status/5")
            return status["BytesDone"] / status["BytesTotal"] if status["BytesTotal"] else 0.0

        self.start_seed(source, target, 5)
        for resumes, fraction in enumerate((0.25, 0.6)):
            deadline = time.monotonic() + 30
            while arrived() < fraction:
                self.assertLess(time.monotonic(), deadline, self.call(target, "seed-status/5"))
                time.sleep(0.02)
            self.link.cut()  # the relay killed (every connection through it drops) and restarted
            while self.call(target, "seed-status/5")["Resumes"] == resumes:
                self.assertLess(time.monotonic(), deadline, self.call(target, "seed-status/5"))
                time.sleep(0.02)
        sent, received = self.finish_seed(source, target, 5)

        self.assertEqual(tree_digests(self.target_dir), tree_digests(self.source_dir))
        self.assertEqual(os.readlink(os.path.join(self.target_dir, "link to t0")), "db/t0.ibd")
        self.assertTrue(os.path.isdir(os.path.join(self.target_dir, "empty", "deeper")))
        size = sum(sizes.values())
        for status in (sent, received):
            self.assertEqual((status["Resumes"], status["BytesDone"], status["BytesTotal"]), (2, size, size), status)
            self.assertLess(status["ResentBytes"], size / 10, status)
        self.assertGreater(sent["ResentBytes"], 0, sent)
        self.assertEqual(self.link.connections, 3)

    def test_command_mode_with_socat_and_tar_through_the_link(self):
        write_random_tree(self.source_dir, {"db/t1.ibd": 8 * MB, "db/t2.ibd": 1 * MB, "mysql/user.MYD": 512})
        os.makedirs(self.target_dir)
        source, target = self.start_agents("100mbit", **socat_tar_commands(self.directory))

        started = time.monotonic()
        self.start_seed(source, target, 4, wait_before_send=1)
        self.finish_seed(source, target, 4)
        seconds = time.monotonic() - started

        self.assertEqual(tree_digests(self.target_dir), tree_digests(self.source_dir))
        # 9 MiB at 12.5 MB/s: socat went through the shaped link too
        self.assertGreater(seconds, 1 + 0.8 * 9 * MB / (100e6 / 8), seconds)


@requires_root("network namespaces and qdiscs")
class NamespaceCleanupTests(SynchronousTestCase):
    """A test that fails inside its namespace still leaves no namespace, qdisc or agent behind."""

    def test_a_failed_test_removes_its_namespace_and_stops_its_agent(self):
        seen = {}

        class Failing(SynchronousTestCase):
            def test_fails_inside(self):
                net = network_namespace(self, rate="100mbit")
                seen["name"] = net.name
                seen["qdisc"] = subprocess.run(["tc", "-n", net.name, "qdisc", "show", "dev", "lo"],
                                               capture_output=True, text=True, check=True).stdout
                process = net.popen(["sleep", "600"])
                seen["pid"] = process.pid
                self.fail("a failure inside the namespace")

        result = TestResult()
        Failing("test_fails_inside").run(result)

        self.assertEqual(len(result.failures), 1, result.errors)
        self.assertIn("tbf", seen["qdisc"])
        self.assertNotIn(seen["name"], namespaces())
        self.assertFalse(os.path.exists(f"/run/netns/{seen['name']}"))
        self.assertFalse(os.path.exists(f"/proc/{seen['pid']}"), "the process started inside still runs")
