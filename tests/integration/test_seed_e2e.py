"""A whole seed as stock orchestrator runs it, between two real agents and real MariaDB servers.

The source (127.0.0.1) holds a running MariaDB whose directory is a btrfs subvolume, with
InnoDB, Aria and MyISAM tables; its agent takes a snapshot (``create-snapshot``) while it runs.
The target (127.0.0.2) has an installed, stopped MariaDB.  The test client plays orchestrator's
``executeSeed`` call for call (contract B.2.2, B.2.3) with orchestrator's decoding rules
(B.1.4); afterwards MariaDB runs on the target and every user table has the source's checksum.
Once with the built-in transfer, once with socat/tar commands as V1 users configure them.

Shared per class: the btrfs file system and the running source server (about 5 s to build).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from testbed.agent import free_port, malloc_thread_arenas, start_agent
from testbed.orchestrator import STATUS_POLL, HostAgent, Orchestrator
from testbed.seeding import (
    SOURCE_ADDRESS, TARGET_ADDRESS, SeedSource, SeedTarget, socat_tar_commands, table_checksums, transfer_settings)
from tests.support.root import requires_root

POLL = [command for command, _, _ in STATUS_POLL]
# orchestrator sleeps 30 s between copy rounds.  Much less than the agent's 5 s mysql-du cache
# would let its 10-rounds-without-progress rule end a seed that is merely slow (a busy disk).
POLL_SECONDS = 2



@requires_root("a btrfs loop device for the source's snapshot; MariaDB sandboxes")
class SeedEndToEndTests(SynchronousTestCase):
    """A whole seed between real agents and MariaDB servers (built in, and socat/tar), driven as orchestrator does."""

    @classmethod
    def setUpClass(cls):
        cls.directory = tempfile.mkdtemp(prefix="orchagent-seed-e2e-")
        cls.source = SeedSource(cls.directory, size_mb=300)
        cls.source_checksums = cls.source.checksums

    @classmethod
    def tearDownClass(cls):
        cls.source.destroy()
        shutil.rmtree(cls.directory, ignore_errors=True)

    def setUp(self):
        self.orchestrator = Orchestrator()
        self.workdir = tempfile.mkdtemp(prefix="orchagent-seed-e2e-test-")
        self.addCleanup(shutil.rmtree, self.workdir, ignore_errors=True)
        self.target = SeedTarget(os.path.join(self.workdir, "target"), install=True)
        self.addCleanup(self._stop_target_server)
        self.pids: list[int] = []  # the agents' processes

    def _stop_target_server(self):
        if self.target.sandbox.is_running():
            self.target.sandbox.stop()

    def start_agents(self, source_settings: dict, target_settings: dict) -> tuple[HostAgent, HostAgent]:
        agents = []
        for settings, address in ((source_settings, SOURCE_ADDRESS), (target_settings, TARGET_ADDRESS)):
            agent = start_agent(settings, address=address, directory=tempfile.mkdtemp(dir=self.workdir))
            self.addCleanup(agent.stop)
            self.pids.append(agent.process.pid)
            agents.append(HostAgent.of(agent))
        return agents[0], agents[1]

    def take_snapshot(self, source: HostAgent) -> str:
        """``create-snapshot`` on the source while MariaDB runs; removed again at cleanup."""
        self.assertTrue(self.source.sandbox.is_running())
        self.assertEqual(self.orchestrator.command(source, "create-snapshot").status, 200)
        volumes = self.orchestrator.get_agent(source).LogicalVolumes
        self.assertEqual(len(volumes), 1, volumes)
        path = volumes[0]["Path"]
        self.addCleanup(self.orchestrator.command, source, f"removelv?lv={path}")
        return path

    def seed_and_check(self, source: HostAgent, target: HostAgent, seed_id: int, wait_before_send: float):
        snapshot = self.take_snapshot(source)
        before = self.orchestrator.get_agent(target)
        self.assertFalse(before.MySQLRunning)

        run = self.orchestrator.seed(target, source, seed_id, wait_before_send=wait_before_send,
                                     poll_seconds=POLL_SECONDS)

        self.assertEqual(run.error, "", [(s.action, s.error) for s in run.states])
        self.assertEqual(run.states[-1].action, "Done")
        rounds = len(run.copied)
        self.assertEqual(run.commands(source.hostname), [
            *POLL, f"mountlv?lv={snapshot}", *POLL, f"send-mysql-seed-data/{TARGET_ADDRESS}/{seed_id}", "umount"])
        loop = [[*POLL, f"seed-command-completed/{seed_id}"] for _ in range(rounds)]
        loop[-1].append(f"seed-command-succeeded/{seed_id}")
        self.assertEqual(run.commands(target.hostname), [
            *POLL, "delete-mysql-datadir", *POLL, f"receive-mysql-seed-data/{seed_id}",
            *sum(loop, []), f"post-copy/?sourceHost={SOURCE_ADDRESS}", "mysql-start"])
        for call in run.calls:
            if call.command != "mysql-error-log-tail":  # 404 while the target never ran: allowed (B.5 #6)
                self.assertEqual(call.status, 200, call)
            self.assertTrue(call.gzipped, call)  # Go asks for gzip; the agent obliges

        # orchestrator's progress: the target's mysql-du, growing up to the snapshot's size
        self.assertGreater(run.source_bytes, 20 * 1024 * 1024)
        self.assertEqual(run.copied, sorted(run.copied))
        self.assertWithinOnePercent(run.copied[-1], run.source_bytes)
        self.assertTrue(rounds == 1 or run.copied[0] < run.copied[-1], run.copied)

        # the target has the source's data, and MariaDB runs on it (started through mysql-start)
        self.assertTrue(self.target.sandbox.is_running())
        self.assertEqual(table_checksums(self.target.sandbox), self.source_checksums)
        self.assertEqual(len(self.source_checksums), 4)
        after = self.orchestrator.get_agent(target)
        self.assertTrue(after.MySQLRunning)
        self.assertEqual(after.errors, {})
        self.assertFalse(self.orchestrator.get_agent(source).MountPoint["IsMounted"])
        self.assertTrue(self.source.sandbox.is_running())
        return run

    def assertWithinOnePercent(self, value: int, expected: int):
        """Byte counts of the same files: du also counts directories, whose sizes differ by file system."""
        self.assertLess(abs(value - expected), expected / 100, (value, expected))

    def seed_status(self, agent: HostAgent, seed_id: int) -> dict:
        call = self.orchestrator.command(agent, f"seed-status/{seed_id}")
        self.assertEqual(call.status, 200, call)
        return call.json()

    def metrics(self, agent: HostAgent) -> dict:
        """``/metrics`` of a real agent, parsed by prometheus_client's own parser."""
        with urllib.request.urlopen(f"http://{agent.hostname}:{agent.port}/metrics", timeout=10) as response:
            text = response.read().decode()
        self.assertNotIn(agent.token, text)
        return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(text) for sample in family.samples}

    def test_builtin_transfer(self):
        port = free_port(TARGET_ADDRESS)
        transfer = transfer_settings(port, "e2e shared secret")
        audit_log = os.path.join(self.workdir, "audit.log")
        source, target = self.start_agents({**self.source.settings(), **transfer, "SeedCompression": "zstd"},
                                           {**self.target.settings(), **transfer, "AuditLogFile": audit_log})
        run = self.seed_and_check(source, target, 11, wait_before_send=0.5)

        status = self.seed_status(target, 11)
        self.assertEqual({k: status[k] for k in ("Role", "Mode", "State", "Completed", "Succeeded", "Error")},
                         {"Role": "receive", "Mode": "built-in", "State": "succeeded", "Completed": True,
                          "Succeeded": True, "Error": ""})
        for key in ("BytesDone", "BytesTotal", "FilesDone", "FilesTotal", "BytesPerSecond"):
            self.assertIs(type(status[key]), int, key)
        self.assertEqual(status["BytesDone"], status["BytesTotal"])
        self.assertEqual(status["FilesDone"], status["FilesTotal"])
        self.assertGreater(status["FilesDone"], 50)
        self.assertWithinOnePercent(status["BytesDone"], run.source_bytes)
        sent = self.seed_status(source, 11)
        self.assertEqual((sent["Role"], sent["State"], sent["Peer"], sent["BytesDone"]),
                         ("send", "succeeded", TARGET_ADDRESS, status["BytesDone"]))
        self.assertFalse([name for name in os.listdir(self.target.sandbox.datadir) if name.startswith(".orchagent")])
        # compressed on the wire (an InnoDB datadir is mostly empty pages), verified as written
        self.assertEqual((sent["WireBytes"], sent["DataBytes"]), (status["WireBytes"], status["DataBytes"]))
        self.assertGreater(status["DataBytes"], status["BytesDone"])  # the data and the frames around it
        self.assertGreater(status["CompressionRatio"], 2)
        self.assertAlmostEqual(status["CompressionRatio"], status["DataBytes"] / status["WireBytes"], places=2)
        # every thread of a seed (reading, compressing, sending; receiving, writing) allocated from
        # the one malloc arena, where the next seed reuses what this one freed (orchagent.allocator)
        self.assertEqual([malloc_thread_arenas(pid) for pid in self.pids], [0, 0])

        # what an operator's Prometheus and audit log saw of it
        metrics = self.metrics(target)
        rounds = len(run.copied)
        for route, count in (("/api/receive-mysql-seed-data/:seedId", 1), ("/api/seed-command-completed/:seedId", rounds),
                             ("/api/delete-mysql-datadir", 1), ("/api/mysql-start", 1)):
            self.assertEqual(metrics[("orchagent_http_requests_total",
                                      (("code", "200"), ("method", "GET"), ("route", route)))], count, route)
        self.assertEqual(metrics[("orchagent_seeds", (("role", "receive"), ("state", "succeeded")))], 1)
        self.assertEqual(metrics[("orchagent_mysql_up", ())], 1)
        self.assertGreater(metrics[("orchagent_commands_total", (("outcome", "succeeded"),))], 0)
        self.assertEqual(self.metrics(source)[("orchagent_seeds", (("role", "send"), ("state", "succeeded")))], 1)
        with open(audit_log) as f:
            audited = [json.loads(line) for line in f]
        self.assertEqual([(line["route"], line["status"]) for line in audited], [
            ("/api/delete-mysql-datadir", 200), ("/api/receive-mysql-seed-data/:seedId", 200),
            ("/api/post-copy", 200), ("/api/mysql-start", 200)])
        self.assertEqual((audited[1]["seed_id"], audited[1]["client"]), (11, "127.0.0.1"))

    def test_command_mode_with_socat_and_tar(self):
        commands = socat_tar_commands(tempfile.mkdtemp(dir=self.workdir))
        settings = {**commands, "SeedTransferPort": free_port(TARGET_ADDRESS)}
        source, target = self.start_agents({**self.source.settings(), **settings},
                                           {**self.target.settings(), **settings})
        self.seed_and_check(source, target, 12, wait_before_send=1)

        status = self.seed_status(target, 12)
        self.assertEqual((status["Mode"], status["State"], status["Succeeded"]), ("command", "succeeded", True))
