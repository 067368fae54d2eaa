"""Hot backups on real MariaDB 10.11 and mariabackup: the virtual volume orchestrator mounts, and the
tools' command lines for real (backup streamed into mbstream, prepare, a replica started on the copy
and pointed at the source by the replication set-up).

The pipeline here runs the two tools joined by a thread on this host, as the two ends of a hot seed
do (the whole seed between two agents: ``test_hot_seed.py``).
"""

from __future__ import annotations

import os
import shlex
import signal
import shutil
import subprocess
import tempfile
import time

from twisted.internet import reactor, threads
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from orchagent.config import Config
from orchagent.errors import AgentError
from orchagent.host.hotbackup import TOOLS, backup_argv, extract_argv, prepare_copy
from orchagent.host.toolstreams import ToolStream, start_backup, start_extract
from orchagent.host.replication import ReplicationSetup
from orchagent.process import ProcessRunner
from orchagent.threads import thread_runner
from testbed.agent import start_agent
from testbed.hotseeding import BACKUP_PASSWORD, REPLICATION_PASSWORD, defaults_file, source_with_users, write_private
from testbed.mariadb import MariaDBSandbox
from testbed.orchestrator import HostAgent, Orchestrator
from tests.support.deferreds import inline

MARIABACKUP = TOOLS["mariabackup"]


def root_only_directory(testcase) -> str:
    """A fresh 0700 directory under /tmp: every directory on its path is one only root can change.

    The test's temporary files (the backups') go to its ``tmp``, so that what is left there is this
    test's doing, whatever else runs on the machine.
    """
    directory = tempfile.mkdtemp(prefix="orchagent-hotbackup-")
    testcase.addCleanup(shutil.rmtree, directory, True)
    os.mkdir(os.path.join(directory, "tmp"))
    testcase.patch(tempfile, "tempdir", os.path.join(directory, "tmp"))
    return directory


class VirtualVolumeTests(SynchronousTestCase):
    """Orchestrator's calls up to the send work unchanged against SnapshotBackend hotbackup."""

    @classmethod
    def setUpClass(cls):
        cls.directory = tempfile.mkdtemp(prefix="orchagent-hotbackup-")
        cls.source = source_with_users(cls.directory)
        try:
            cls._start_agent()
        except BaseException:
            cls.source.stop()
            shutil.rmtree(cls.directory)
            raise

    @classmethod
    def _start_agent(cls):
        os.mkdir(os.path.join(cls.directory, "agent"))
        cls.defaults = defaults_file(cls.directory, cls.source, BACKUP_PASSWORD)
        cls.running = start_agent({**cls.source.config_values(), "SnapshotBackend": "hotbackup",
                                   "HotBackupDefaultsFile": cls.defaults, "SeedStartReplication": True,
                                   "SeedReplicationUser": "repl",
                                   "SeedReplicationPasswordFile": write_private(cls.directory, "repl", "x"),
                                   "SeedTransferSecret": "s" * 32},
                                  directory=os.path.join(cls.directory, "agent"))
        cls.agent = HostAgent.of(cls.running)

    @classmethod
    def tearDownClass(cls):
        cls.running.stop()
        cls.source.stop()
        shutil.rmtree(cls.directory)

    def setUp(self):
        self.orchestrator = Orchestrator()
        self.addCleanup(self.orchestrator.command, self.agent, "umount")

    def test_orchestrators_sequence_up_to_the_send(self):
        before = self.orchestrator.get_agent(self.agent)
        self.assertEqual(before.errors, {})
        datadir = self.source.datadir
        self.assertEqual(before.LogicalVolumes, [{"Name": "hot-backup", "GroupName": "mariabackup",
                                                  "Path": "/hotbackup" + datadir, "IsSnapshot": True,
                                                  "SnapshotPercent": 0}])
        self.assertFalse(before.MountPoint["IsMounted"])

        mounted = self.orchestrator.command(self.agent, f"mountlv?lv={before.LogicalVolumes[0]['Path']}")
        self.assertEqual(mounted.status, 200, mounted.body)
        after = self.orchestrator.get_agent(self.agent)
        mount = after.MountPoint
        self.assertTrue(mount["IsMounted"])
        self.assertEqual((mount["MySQLDataPath"], mount["LVPath"]), (datadir, "/hotbackup" + datadir))
        du = int(subprocess.run(["du", "-sb", datadir], capture_output=True, text=True, check=True).stdout.split()[0])
        self.assertAlmostEqual(mount["MySQLDiskUsage"], du, delta=du * 0.1)  # the server writes on meanwhile
        self.assertGreater(mount["MySQLDiskUsage"], 1 << 20)

        # the send streams a backup (tests/integration/test_hot_seed.py)
        created = self.orchestrator.command(self.agent, "create-snapshot")
        self.assertEqual(created.status, 409)
        self.assertIn("nothing to create", created.json()["Message"])
        unmounted = self.orchestrator.command(self.agent, "umount")
        self.assertFalse(unmounted.json()["IsMounted"])

    def test_wrong_backup_credentials_fail_at_mountlv(self):
        defaults_file(self.directory, self.source, "wrong")
        self.addCleanup(defaults_file, self.directory, self.source, BACKUP_PASSWORD)
        answer = self.orchestrator.command(self.agent, f"mountlv?lv=/hotbackup{self.source.datadir}")
        self.assertEqual(answer.status, 409)
        message = answer.json()["Message"]
        self.assertIn("HotBackupDefaultsFile", message)
        self.assertIn("Access denied for user 'backup'@'localhost'", message)
        self.assertNotIn(BACKUP_PASSWORD, message)
        self.assertFalse(self.orchestrator.get_agent(self.agent).MountPoint["IsMounted"])


class BackupPrepareReplicateTests(TestCase):
    """The tools' command lines for real: backup | mbstream, prepare, a replica that replicates."""

    timeout = 120

    @inline
    async def test_backup_prepare_and_replicate(self):
        directory = root_only_directory(self)
        source = source_with_users(directory)
        self.addCleanup(source.stop)
        defaults = defaults_file(directory, source, BACKUP_PASSWORD)
        replica = MariaDBSandbox(os.path.join(directory, "replica"), extra_options={"server_id": "2"})
        os.makedirs(replica.datadir)
        runner = ProcessRunner(reactor, default_timeout=120)

        # a write lands during the backup's lifetime: the copy must still be consistent
        source.sql("INSERT INTO shop.orders (item) VALUES ('during')")
        in_thread = thread_runner(reactor)
        backup = await start_backup(runner, MARIABACKUP, defaults, source.datadir, in_thread, idle_timeout=60)
        extract = start_extract(runner, MARIABACKUP, replica.datadir, in_thread)
        copied = await threads.deferToThread(_copy, backup, extract)  # what the seed transfer does in between
        await backup.finished()
        await extract.finished()
        self.assertGreater(copied, 1 << 20)
        self.assertEqual(_backup_temp_dirs(), [])  # the backup's temporary directory is gone
        position = await prepare_copy(runner, MARIABACKUP, replica.datadir, 64, thread_runner(reactor), timeout=120)
        self.assertEqual(position.flavor, "mariadb")
        self.assertEqual(position.gtid, source.sql("SELECT @@gtid_binlog_pos").strip())

        replica.start()
        self.addCleanup(replica.stop)
        client = replica.config_values()["MySQLClientCommand"]

        def setup(password: str) -> ReplicationSetup:
            config = Config(seed_start_replication=True, seed_replication_user="repl", mysql_client_command=client,
                            seed_replication_password_file=write_private(directory, "repl-password", password + "\n"))
            return ReplicationSetup(config, runner, reactor, thread_runner(reactor))

        report = await setup("wrong").start("127.0.0.1", source.port, position)
        self.assertFalse(report.running)
        self.assertIn("Access denied for user 'repl'", report.problem)

        report = await setup(REPLICATION_PASSWORD).start("127.0.0.1", source.port, position)
        self.assertTrue(report.running, report.problem)
        self.assertIn(f"repl@127.0.0.1:{source.port} at GTID {position.gtid}", report.configured)

        source.sql("INSERT INTO shop.orders (item) VALUES ('after the seed')")
        checksum = source.sql("CHECKSUM TABLE shop.orders")
        deadline = time.monotonic() + 30
        while replica.sql("CHECKSUM TABLE shop.orders") != checksum and time.monotonic() < deadline:
            await _sleep(0.2)
        self.assertEqual(replica.sql("CHECKSUM TABLE shop.orders"), checksum)
        self.assertEqual(replica.sql("SELECT COUNT(*) FROM shop.orders"), "5\n")


class DamagedCopyTests(TestCase):
    """A damaged copy fails at --prepare, with the tool's own words, not later at the server's start."""

    timeout = 120

    @inline
    async def test_prepare_fails_on_a_damaged_copy(self):
        directory = root_only_directory(self)
        source = source_with_users(directory)
        self.addCleanup(source.stop)
        copy = os.path.join(directory, "copy")
        os.mkdir(copy)
        runner = ProcessRunner(reactor, default_timeout=120)
        defaults = defaults_file(directory, source, BACKUP_PASSWORD)
        pipeline = (f"set -o pipefail; {shlex.join(backup_argv(MARIABACKUP, defaults, directory + '/t', source.datadir))}"
                    f" | {shlex.join(extract_argv(MARIABACKUP, copy))}")
        await runner.run(["bash", "-c", pipeline], name="mariabackup | mbstream")
        os.truncate(os.path.join(copy, "ib_logfile0"), 1024)  # the copied redo log, cut short
        with self.assertRaises(AgentError) as caught:
            await prepare_copy(runner, MARIABACKUP, copy, 64, thread_runner(reactor), timeout=120)
        self.assertEqual(str(caught.exception), "mariabackup --prepare failed: [ERROR] InnoDB: File ./ib_logfile0 is too small")


def _copy(backup: ToolStream, extract: ToolStream) -> int:
    """Thread: the backup's stream into the extractor, as the two ends of a hot seed do; the bytes moved."""
    total = 0
    try:
        while chunk := os.read(backup.fd, 1 << 20):
            view = memoryview(chunk)
            while view:
                view = view[os.write(extract.fd, view):]
            total += len(chunk)
    finally:
        backup.close()
        extract.close()
    return total


def _backup_temp_dirs() -> list[str]:
    return [name for name in os.listdir(tempfile.gettempdir()) if name.endswith(".orchagent-hotbackup")]


def _sleep(seconds: float):
    return deferLater(reactor, seconds, lambda: None)


class KilledBackupTests(TestCase):
    """A backup killed mid-stream (abort) leaves the source as before: no process, connection or backup stage."""

    timeout = 120

    @inline
    async def test_killed_mid_stream(self):
        directory = root_only_directory(self)
        source = source_with_users(directory)
        self.addCleanup(source.stop)
        defaults = defaults_file(directory, source, BACKUP_PASSWORD)
        # nobody reads the stream: the backup blocks once the pipe is full, in the middle of its copy
        runner = ProcessRunner(reactor, default_timeout=120, kill_grace=1)
        stream = await start_backup(runner, MARIABACKUP, defaults, source.datadir, thread_runner(reactor),
                                    idle_timeout=None)
        self.addCleanup(stream.close)
        backup = stream.command
        backup.result.addErrback(lambda failure: None)
        self.assertEqual(len(_backup_temp_dirs()), 1)
        deadline = time.monotonic() + 30
        while "backup" not in source.sql("SELECT user FROM information_schema.PROCESSLIST") and \
                time.monotonic() < deadline:
            await _sleep(0.1)
        self.assertIn("backup", source.sql("SELECT user FROM information_schema.PROCESSLIST"))

        await stream.abort()  # mariabackup blocked on its stream outlives SIGTERM: SIGKILL after kill_grace
        self.assertEqual(subprocess.run(["pgrep", "-g", str(backup.pid)], capture_output=True).stdout, b"")
        deadline = time.monotonic() + 10
        while "backup" in source.sql("SELECT user FROM information_schema.PROCESSLIST") and \
                time.monotonic() < deadline:
            await _sleep(0.1)
        self.assertNotIn("backup", source.sql("SELECT user FROM information_schema.PROCESSLIST"))
        # no stage or lock left behind: another backup could take every stage at once
        source.sql("SET SESSION lock_wait_timeout=2; BACKUP STAGE START; BACKUP STAGE FLUSH; "
                   "BACKUP STAGE BLOCK_DDL; BACKUP STAGE BLOCK_COMMIT; BACKUP STAGE END;")
        source.sql("INSERT INTO shop.orders (item) VALUES ('after the abort')")
        self.assertEqual(_backup_temp_dirs(), [])  # no temporary files left

    @inline
    async def test_killed_backup_fails_with_the_tools_end(self):
        directory = root_only_directory(self)
        source = source_with_users(directory)
        self.addCleanup(source.stop)
        defaults = defaults_file(directory, source, BACKUP_PASSWORD)
        runner = ProcessRunner(reactor, default_timeout=120, kill_grace=1)
        in_thread = thread_runner(reactor)
        backup = await start_backup(runner, MARIABACKUP, defaults, source.datadir, in_thread, idle_timeout=60)
        self.addCleanup(backup.close)
        first = await threads.deferToThread(os.read, backup.fd, 1 << 16)  # streaming has begun
        self.assertTrue(first)
        os.killpg(backup.command.pid, signal.SIGKILL)  # as the OOM killer or an admin would
        with self.assertRaises(AgentError) as caught:
            await backup.finished()
        self.assertIn("mariabackup --backup failed: mariabackup was killed by signal 9", str(caught.exception))
        self.assertEqual(_backup_temp_dirs(), [])

    @inline
    async def test_wrong_credentials_fail_with_the_tools_words(self):
        directory = root_only_directory(self)
        source = source_with_users(directory)
        self.addCleanup(source.stop)
        defaults = defaults_file(directory, source, "not the password")
        runner = ProcessRunner(reactor, default_timeout=120, kill_grace=1)
        backup = await start_backup(runner, MARIABACKUP, defaults, source.datadir, thread_runner(reactor),
                                    idle_timeout=60)
        self.addCleanup(backup.close)
        self.assertEqual(await threads.deferToThread(os.read, backup.fd, 1 << 16), b"")
        with self.assertRaises(AgentError) as caught:
            await backup.finished()
        self.assertIn("mariabackup --backup failed: ", str(caught.exception))
        self.assertIn("Access denied for user 'backup'", str(caught.exception))
