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
import time

from twisted.trial.unittest import SynchronousTestCase

from orchagent.ctl.sequence import BAILING_OUT
from testbed.hotseeding import HotSeedHosts, WriteLoad, damaging_backup_tool, replica_status
from testbed.orchestrator import HostAgent, Orchestrator
from testbed.seeding import TARGET_ADDRESS, table_checksums
from tests.support.root import requires_root


class HotSeedCase(SynchronousTestCase):
    """A source MariaDB with binary logs and GTIDs, an empty target, an agent on each (not a test itself)."""

    rate = 0  # SeedMaxBytesPerSecond of the source

    def source_path(self) -> tuple[str, ...]:
        """Directories in front of the source agent's PATH (a wrapped backup tool)."""
        return ()

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="orchagent-hot-seed-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.hosts = hosts = HotSeedHosts(self.directory, rate=self.rate, source_path=self.source_path())
        self.addCleanup(hosts.close)
        self.source, self.target_server, self.defaults = hosts.source, hosts.target_server, hosts.defaults
        self.source_agent, self.target_agent = hosts.source_agent, hosts.target_agent
        self.orchestrator = Orchestrator()

    def status(self, agent: HostAgent, seed_id: int = 1) -> dict:
        return self.orchestrator.command(agent, f"seed-status/{seed_id}").json()

    def completed(self, agent: HostAgent) -> dict:
        deadline = time.monotonic() + 20
        while not (status := self.status(agent))["Completed"] and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertTrue(status["Completed"], status)
        return status

    def assertReplicating(self, status: dict) -> None:
        """Both replication threads run without error, and the target catches up to the source."""
        deadline = time.monotonic() + 15
        while (fields := replica_status(self.target_server)).get("Slave_IO_Running") != "Yes" and \
                time.monotonic() < deadline:
            time.sleep(0.2)  # the I/O thread is connecting
        self.assertEqual((fields.get("Slave_IO_Running"), fields.get("Slave_SQL_Running"), fields.get("Last_Errno"),
                          fields.get("Last_Error")), ("Yes", "Yes", "0", ""), status)
        expected = table_checksums(self.source)
        deadline = time.monotonic() + 30
        while table_checksums(self.target_server) != expected and time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertEqual(table_checksums(self.target_server), expected)

    def assertSourceClean(self):
        """No backup connection, stage, lock or temporary file left; no tool's end went unheard."""
        self.assertNotIn("backup", self.source.sql("SELECT user FROM information_schema.PROCESSLIST"))
        self.source.sql("SET SESSION lock_wait_timeout=2; BACKUP STAGE START; BACKUP STAGE FLUSH; "
                        "BACKUP STAGE BLOCK_DDL; BACKUP STAGE BLOCK_COMMIT; BACKUP STAGE END;")
        self.assertEqual(self.hosts.backup_temp_dirs(), [])
        self.assertNotIn("Unhandled error", self.hosts.agent_logs())


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
        self.assertIsNone(load.error)
        self.assertGreater(run.copied[-1], 1 << 20)  # mysql-du grew as the stream was extracted
        status = self.status(self.target_agent)
        self.assertTrue(self.target_server.is_running())
        self.assertReplicating(status)
        self.assertEqual(self.hosts.backup_temp_dirs(), [])


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


@requires_root("MariaDB sandboxes and a root-only HotBackupDefaultsFile")
class CorruptedStreamTests(HotSeedCase):
    """A stream damaged before the transport saw it (a flipped byte in a table's data page, every chunk
    header intact) fails at extraction with the tool's words; MariaDB never starts on the copy."""

    def source_path(self) -> tuple[str, ...]:
        return (damaging_backup_tool(self.directory),)

    def test_a_corrupted_stream_fails_the_seed_and_never_reaches_the_server(self):
        run = self.orchestrator.seed(self.target_agent, self.source_agent, 1, wait_before_send=0.5,
                                     poll_seconds=0.5)
        self.assertEqual(run.error, BAILING_OUT)  # orchestrator read completed and not succeeded
        target = self.completed(self.target_agent)
        self.assertFalse(target["Succeeded"])
        self.assertRegex(target["Error"], r"^mbstream -x failed: xb_stream_read_chunk\(\): invalid checksum at "
                                          r"offset 0x[0-9a-f]+: expected 0x[0-9a-f]+, read 0x[0-9a-f]+\.$")
        self.assertEqual(os.listdir(self.target_server.datadir), [])
        self.assertNotIn("mysql-start", run.commands(TARGET_ADDRESS))
        self.assertFalse(self.target_server.is_running())
        self.assertFalse(os.path.exists(self.target_server.error_log))  # MariaDB never ran there
        self.assertFalse(self.completed(self.source_agent)["Succeeded"])
        self.assertSourceClean()


def unmount(path: str) -> None:
    if subprocess.run(["umount", path], stderr=subprocess.DEVNULL).returncode:
        subprocess.run(["umount", "--lazy", path], stderr=subprocess.DEVNULL)


@requires_root("MariaDB sandboxes, a root-only HotBackupDefaultsFile and a tmpfs mount")
class TargetDiskFullTests(HotSeedCase):
    """The target's datadir fills up during extraction: the seed fails with the tool's "No space left on
    device", nothing of it stays behind, and the agent seeds fine once there is room."""

    def test_a_full_disk_fails_the_seed_and_the_next_one_works(self):
        datadir = self.target_server.datadir
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "orchagent-test-full", datadir],
                       check=True)  # the backup is about 35 MB
        self.addCleanup(unmount, datadir)
        # orchestrator would refuse to start for want of space (MySQLDatadirDiskFree): the calls of a seed
        # that passed that check, and then the disk filled up
        self.assertEqual(self.orchestrator.command(self.target_agent, "receive-mysql-seed-data/1").status, 200)
        volume = self.orchestrator.get_agent(self.source_agent).LogicalVolumes[0]["Path"]
        self.assertEqual(self.orchestrator.command(self.source_agent, f"mountlv?lv={volume}").status, 200)
        sent = self.orchestrator.command(self.source_agent, f"send-mysql-seed-data/{TARGET_ADDRESS}/1")
        self.assertEqual(sent.status, 200, sent.body)

        target = self.completed(self.target_agent)
        self.assertFalse(target["Succeeded"])
        self.assertRegex(target["Error"], r'^mbstream -x failed: mbstream: Error writing file .* \(Errcode: 28 '
                                          r'"No space left on device"\)$')
        self.assertEqual(os.listdir(datadir), [])  # the staging tree too
        self.assertFalse(self.completed(self.source_agent)["Succeeded"])
        self.assertSourceClean()
        self.assertEqual(self.orchestrator.command(self.source_agent, "umount").status, 200)

        # the agent holds nothing on the full file system, and seeds once there is room
        subprocess.run(["umount", datadir], check=True)
        run = self.orchestrator.seed(self.target_agent, self.source_agent, 2, wait_before_send=0.5, poll_seconds=0.5)
        self.assertEqual(run.error, "", self.status(self.target_agent, 2))
        self.assertReplicating(self.status(self.target_agent, 2))
