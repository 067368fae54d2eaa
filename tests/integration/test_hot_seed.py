"""A hot seed as stock orchestrator runs it: a running MariaDB under a write load, with no snapshots
(``SnapshotBackend: "hotbackup"``), seeded onto an empty target through two real agents; the
target comes up replicating from the backup's exact position and catches up to the source.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time

from twisted.trial.unittest import SynchronousTestCase

from testbed.agent import free_port, start_agent
from testbed.mariadb import MariaDBSandbox
from testbed.orchestrator import HostAgent, Orchestrator
from testbed.seeding import SOURCE_ADDRESS, TARGET_ADDRESS, table_checksums, transfer_settings
from tests.integration.test_hotbackup import (BACKUP_PASSWORD, REPLICATION_PASSWORD, defaults_file, source_with_users,
                                              write_private)
from tests.support.root import requires_root


def replica_status(server: MariaDBSandbox) -> list[str]:
    """SHOW SLAVE STATUS's one row, by column."""
    return server.sql("SHOW SLAVE STATUS").rstrip("\n").split("\t")


class WriteLoad:
    """A thread inserting rows into the source until stopped (the load a hot seed must not disturb)."""

    def __init__(self, source: MariaDBSandbox) -> None:
        self._source = source
        self._stop = threading.Event()
        self.batches = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._source.sql("USE shop; INSERT INTO orders (item) SELECT CONCAT('load ', seq) FROM seq_1_to_50")
            self.batches += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class HotSeedCase(SynchronousTestCase):
    """A source MariaDB with binary logs and GTIDs, an empty target, an agent on each (not a test itself)."""

    rate = 0  # SeedMaxBytesPerSecond of the source

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="orchagent-hot-seed-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.source = source_with_users(self.directory)
        self.addCleanup(self.source.stop)
        self.source.sql("USE shop; CREATE TABLE bulk (id INT PRIMARY KEY, note TEXT) ENGINE=InnoDB; "
                        "INSERT INTO bulk SELECT seq, REPEAT(MD5(seq), 8) FROM seq_1_to_20000")
        self.target_server = MariaDBSandbox(os.path.join(self.directory, "target"), extra_options={"server_id": "2"})
        os.makedirs(self.target_server.datadir)
        self.addCleanup(lambda: self.target_server.is_running() and self.target_server.stop())
        port = free_port(TARGET_ADDRESS)
        transfer = transfer_settings(port, "s" * 32)
        self.defaults = defaults_file(self.directory, self.source, BACKUP_PASSWORD)
        no_snapshots = os.path.join(self.directory, "no-snapshots")
        os.makedirs(no_snapshots)
        self.source_agent = self._agent(SOURCE_ADDRESS, {
            **self.source.config_values(), **transfer, "SnapshotBackend": "hotbackup",
            "SeedMaxBytesPerSecond": self.rate,
            "HotBackupDefaultsFile": self.defaults})
        self.target_agent = self._agent(TARGET_ADDRESS, {
            **self.target_server.config_values(), **transfer, "SnapshotBackend": "btrfs",
            "BtrfsSnapshotDirectory": no_snapshots, "SeedStartReplication": True, "SeedReplicationUser": "repl",
            "SeedReplicationPasswordFile": write_private(self.directory, "repl-password", REPLICATION_PASSWORD)})
        self.orchestrator = Orchestrator()

    def _agent(self, address: str, settings: dict) -> HostAgent:
        running = start_agent(settings, address=address, directory=tempfile.mkdtemp(dir=self.directory))
        self.addCleanup(running.stop)
        return HostAgent.of(running)

    def status(self, agent: HostAgent) -> dict:
        return self.orchestrator.command(agent, "seed-status/1").json()


@requires_root("MariaDB sandboxes and a root-only HotBackupDefaultsFile")
class HotSeedTests(HotSeedCase):
    """A stock orchestrator's seed from a live server under load ends with a replica that replicates."""

    def test_seed_under_load_ends_replicating_with_the_sources_data(self):
        load = WriteLoad(self.source)
        try:
            run = self.orchestrator.seed(self.target_agent, self.source_agent, 1, wait_before_send=0.5,
                                         poll_seconds=1)
        finally:
            load.stop()
        self.assertEqual(run.error, "", (run.states[-3:], self.status(self.source_agent), self.status(self.target_agent)))
        self.assertGreater(load.batches, 0)
        self.assertGreater(run.copied[-1], 1 << 20)  # mysql-du grew as the stream was extracted
        status = self.orchestrator.command(self.target_agent, "seed-status/1").json()
        self.assertTrue(self.target_server.is_running())
        deadline = time.monotonic() + 15
        while (fields := replica_status(self.target_server))[10] != "Yes" and time.monotonic() < deadline:
            time.sleep(0.2)  # the I/O thread is connecting
        # Slave_IO_Running, Slave_SQL_Running, Last_Errno, Last_Error (SHOW SLAVE STATUS's columns 11, 12, 19, 20)
        self.assertEqual((fields[10], fields[11], fields[18], fields[19]), ("Yes", "Yes", "0", ""), status)
        expected = table_checksums(self.source)
        deadline = time.monotonic() + 30
        while table_checksums(self.target_server) != expected and time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertEqual(table_checksums(self.target_server), expected)
        self.assertEqual([n for n in os.listdir(tempfile.gettempdir()) if n.endswith(".orchagent-hotbackup")], [])


@requires_root("MariaDB sandboxes and a root-only HotBackupDefaultsFile")
class HotSeedFailureTests(HotSeedCase):
    """A backup killed mid-stream fails the seed with the tool's error and an empty datadir; an abort
    during the backup leaves the source as before."""

    rate = 2 * 1024 * 1024  # slow enough to act in the middle of the stream

    def start_seed(self) -> int:
        """receive, mountlv, send as orchestrator does; the pid of the running backup."""
        self.assertEqual(self.orchestrator.command(self.target_agent, "receive-mysql-seed-data/1").status, 200)
        volume = self.orchestrator.get_agent(self.source_agent).LogicalVolumes[0]["Path"]
        self.assertEqual(self.orchestrator.command(self.source_agent, f"mountlv?lv={volume}").status, 200)
        sent = self.orchestrator.command(self.source_agent, f"send-mysql-seed-data/{TARGET_ADDRESS}/1")
        self.assertEqual(sent.status, 200, sent.body)
        deadline = time.monotonic() + 20
        while self.status(self.target_agent)["BytesDone"] < 1 << 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        found = subprocess.run(["pgrep", "-f", "--", f"mariabackup --defaults-extra-file={self.defaults} --backup"],
                               capture_output=True, text=True).stdout.split()
        self.assertEqual(len(found), 1, found)
        return int(found[0])

    def completed(self, agent: HostAgent) -> dict:
        deadline = time.monotonic() + 20
        while not (status := self.status(agent))["Completed"] and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertTrue(status["Completed"], status)
        return status

    def assertSourceClean(self):
        self.assertNotIn("backup", self.source.sql("SELECT user FROM information_schema.PROCESSLIST"))
        self.source.sql("SET SESSION lock_wait_timeout=2; BACKUP STAGE START; BACKUP STAGE FLUSH; "
                        "BACKUP STAGE BLOCK_DDL; BACKUP STAGE BLOCK_COMMIT; BACKUP STAGE END;")
        self.assertEqual([n for n in os.listdir(tempfile.gettempdir()) if n.endswith(".orchagent-hotbackup")], [])

    def test_a_backup_killed_mid_stream_fails_the_seed_with_its_error(self):
        os.kill(self.start_seed(), signal.SIGKILL)
        target = self.completed(self.target_agent)
        self.assertFalse(target["Succeeded"])
        self.assertIn("mariabackup --backup failed: mariabackup was killed by signal 9", target["Error"])
        self.assertEqual(os.listdir(self.target_server.datadir), [])
        self.assertFalse(self.completed(self.source_agent)["Succeeded"])
        self.assertSourceClean()

    def test_abort_during_the_backup_leaves_the_source_as_before(self):
        pid = self.start_seed()
        self.assertEqual(self.orchestrator.command(self.source_agent, "abort-seed/1").status, 200)
        self.assertEqual(self.orchestrator.command(self.target_agent, "abort-seed/1").status, 200)
        self.assertEqual(subprocess.run(["ps", "-p", str(pid)], capture_output=True).returncode, 1)  # gone
        self.assertEqual(self.status(self.source_agent)["State"], "aborted")
        target = self.completed(self.target_agent)  # aborted, or failed first by the sender's abort
        self.assertEqual((target["Completed"], target["Succeeded"]), (True, False), target)
        self.assertEqual(os.listdir(self.target_server.datadir), [])
        deadline = time.monotonic() + 10
        while "backup" in self.source.sql("SELECT user FROM information_schema.PROCESSLIST") and \
                time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertSourceClean()
