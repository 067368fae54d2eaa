"""The hotbackup backend: tool command lines, parsers of the tools' output, the checks of mountlv."""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from orchagent.commands import CommandFailed, CommandResult
from orchagent.config import Config
from orchagent.errors import AgentError, Conflict
from orchagent.host.hotbackup import (TOOLS, BinlogPosition, HotBackupBackend, backup_argv, extract_argv,
                                      parse_binlog_info, parse_variables, parse_version, prepare_argv,
                                      server_check_argv, tool_error, volume_path)
from orchagent.host.snapshots import Snapshots
from orchagent.host.toolstreams import ToolStream
from orchagent.web import validate
from tests.support.fake_runner import FakeRunner
from tests.support.mysql_fakes import FIXTURES
from tests.support.storage import StubMySQL, sync_thread

MARIABACKUP, XTRABACKUP = TOOLS["mariabackup"], TOOLS["xtrabackup"]


def fixture(name: str) -> str:
    with open(os.path.join(FIXTURES, "hotbackup", name), encoding="utf-8") as f:
        return f.read()


def private_file(testcase, content: str = "[client]\nuser=backup\npassword=secret\n", mode: int = 0o600) -> str:
    """A file in a fresh root-only directory (so every directory on its path is one only root can change)."""
    directory = tempfile.mkdtemp()
    testcase.addCleanup(shutil.rmtree, directory, True)
    path = os.path.join(directory, "backup.cnf")
    with open(path, "w") as f:
        f.write(content)
    os.chmod(path, mode)
    return path


class CommandLineTests(SynchronousTestCase):
    """Each tool gets its own stream format and extractor; credentials come first, as an option file."""

    def test_mariabackup(self):
        self.assertEqual(backup_argv(MARIABACKUP, "/etc/b.cnf", "/tmp/t", "/var/lib/mysql"),
                         ["mariabackup", "--defaults-extra-file=/etc/b.cnf", "--backup", "--stream=mbstream",
                          "--target-dir=/tmp/t", "--datadir=/var/lib/mysql"])
        self.assertEqual(extract_argv(MARIABACKUP, "/d"), ["mbstream", "-x", "-C", "/d"])
        self.assertEqual(prepare_argv(MARIABACKUP, "/d", 256),
                         ["mariabackup", "--prepare", "--use-memory=256M", "--target-dir=/d"])
        self.assertEqual(server_check_argv(MARIABACKUP, "/etc/b.cnf")[:2], ["mariadb", "--defaults-extra-file=/etc/b.cnf"])

    def test_xtrabackup(self):
        self.assertEqual(backup_argv(XTRABACKUP, "/etc/b.cnf", "/tmp/t", "/data"),
                         ["xtrabackup", "--defaults-extra-file=/etc/b.cnf", "--backup", "--stream=xbstream",
                          "--target-dir=/tmp/t", "--datadir=/data"])
        self.assertEqual(extract_argv(XTRABACKUP, "/d"), ["xbstream", "-x", "-C", "/d"])
        self.assertEqual(prepare_argv(XTRABACKUP, "/d", 64)[:3], ["xtrabackup", "--prepare", "--use-memory=64M"])
        self.assertEqual(server_check_argv(XTRABACKUP, "/etc/b.cnf")[0], "mysql")

    def test_volume_path_survives_the_unescaped_mountlv_query(self):
        self.assertEqual(volume_path("/var/lib/mysql"), "/hotbackup/var/lib/mysql")
        self.assertEqual(validate.volume_identifier(volume_path("/var/lib/mysql"), "lv"), "/hotbackup/var/lib/mysql")
        for odd in ("/data/my sql", "/data/a&b", "/data/x?y", "/data/#1", "/data/100%"):
            self.assertEqual(volume_path(odd), "/hotbackup")


class ParserTests(SynchronousTestCase):
    """Versions, binlog coordinates and errors are read from real (recorded) tool output."""

    def test_versions(self):
        version = parse_version(MARIABACKUP, fixture("mariabackup-version.stderr"))
        self.assertEqual((version.version, version.server), ("10.11.19", "MariaDB server 10.11.19-MariaDB"))
        version = parse_version(XTRABACKUP, fixture("xtrabackup-8.0-version.stderr"))
        self.assertEqual((version.version, version.server), ("8.0.35-30", "MySQL server 8.0.35"))
        self.assertEqual(parse_version(XTRABACKUP, fixture("xtrabackup-8.0-version-with-server-arguments.stderr"))
                         .version, "8.0.32-26")
        with self.assertRaises(AgentError) as caught:
            parse_version(XTRABACKUP, fixture("mariabackup-version.stderr"))
        self.assertIn("HotBackupTool", str(caught.exception))

    def test_mariadb_binlog_info(self):
        self.assertEqual(parse_binlog_info(fixture("mariabackup-10.11-binlog_info")),
                         BinlogPosition("mysql-bin.000001", 880, "0-1-3"))
        position = parse_binlog_info(fixture("mariabackup-10.11-binlog_info-two-domains"))
        self.assertEqual((position.gtid, position.flavor), ("0-1-3,2-1-1", "mariadb"))

    def test_mysql_binlog_info(self):
        position = parse_binlog_info(fixture("xtrabackup-8.0-binlog_info"))
        self.assertEqual(position, BinlogPosition("mysql-bin.000002", 1232, "c777888a-b6df-11e2-a604-080027635ef5:1-4"))
        self.assertEqual(position.flavor, "mysql")
        position = parse_binlog_info(fixture("xtrabackup-8.0-binlog_info-multiline"))
        self.assertEqual(position.gtid, "1a34264e-9ac0-11f1-9e76-5254005f988f:1-61,"
                                        "c777888a-b6df-11e2-a604-080027635ef5:1-4:7-9")
        position = parse_binlog_info(fixture("xtrabackup-binlog_info-no-gtid"))
        self.assertEqual((position.file, position.position, position.gtid, position.flavor),
                         ("master-log.000005", 245, "", ""))

    def test_hostile_binlog_info_is_refused(self):
        for text in ("", "mysql-bin.000001\n", "mysql-bin'; DROP TABLE x; --\t4\n", "f.000001\t12x\n",
                     "f.000001\t4\t0-1-3'; SELECT 1; --\n", "f.000001\t4\tnot-a-gtid\n", "../../etc\t4\n"):
            with self.assertRaises(AgentError):
                parse_binlog_info(text)

    def test_variables(self):
        self.assertEqual(parse_variables("datadir\t/var/lib/mysql/\nlog_bin\tON\nversion\t10.11.19-MariaDB-log\n"),
                         {"datadir": "/var/lib/mysql/", "log_bin": "ON", "version": "10.11.19-MariaDB-log"})

    def test_tool_errors(self):
        self.assertEqual(tool_error(fixture("mariabackup-10.11-access-denied.stderr")),
                         "Failed to connect to MariaDB server: Access denied for user 'nobody'@'localhost' "
                         "(using password: YES).")
        self.assertEqual(tool_error(fixture("mariadb-access-denied.stderr")),
                         "ERROR 1045 (28000): Access denied for user 'nobody'@'localhost' (using password: YES)")
        self.assertEqual(tool_error(fixture("xtrabackup-8.0-cannot-connect.stderr")),
                         "[ERROR] [MY-011825] [Xtrabackup] Failed to connect to MySQL server: Can't connect to "
                         "local MySQL server through socket")
        self.assertEqual(tool_error(fixture("mariabackup-10.11-prepare-damaged.stderr")),
                         "[ERROR] InnoDB: File ./ib_logfile0 is too small")
        self.assertEqual(tool_error(""), "")

    def test_extractor_errors(self):
        # the cause, not the consequence after it, and without the bell mbstream rings before it
        self.assertEqual(tool_error(fixture("mbstream-10.11-disk-full.stderr")),
                         "mbstream: Error writing file './shop/bulk.ibd' (Errcode: 28 \"No space left on device\")")
        self.assertEqual(tool_error(fixture("mbstream-10.11-damaged-chunk.stderr")),
                         "xb_stream_read_chunk(): invalid checksum at offset 0x5c299: expected 0xcde5a701, "
                         "read 0x88f0a299.")


class BackendTests(SynchronousTestCase):
    """mountlv checks the tool, the credentials and the binary log; then the volume reads as mounted."""

    def setUp(self):
        self.defaults = private_file(self)
        self.runner = FakeRunner(stderr={"mariabackup": fixture("mariabackup-version.stderr").encode()},
                                 stdout={"mariadb": b"datadir\t/var/lib/mysql/\nlog_bin\tON\n"})

    def snapshots(self, **keys) -> Snapshots:
        config = Config(snapshot_backend="hotbackup", hot_backup_defaults_file=self.defaults,
                        snapshot_mount_point="/mnt/snap", **keys)
        mysql = StubMySQL("/var/lib/mysql")
        backend = HotBackupBackend(config, self.runner, mysql, sync_thread)
        disk = _FixedDisk(123456)
        return Snapshots(config, backend, self.runner, disk, mysql, sync_thread)

    def resolve(self, coroutine):
        return self.successResultOf(Deferred.fromCoroutine(coroutine))

    def fail_with(self, coroutine, kind):
        return self.failureResultOf(Deferred.fromCoroutine(coroutine), kind).value

    def test_orchestrators_sequence_up_to_the_send(self):
        snapshots = self.snapshots()
        volumes = self.resolve(snapshots.snapshot_volumes())
        self.assertEqual([v.to_json() for v in volumes], [
            {"Name": "hot-backup", "GroupName": "mariabackup", "Path": "/hotbackup/var/lib/mysql",
             "IsSnapshot": True, "SnapshotPercent": 0.0}])
        self.assertFalse(self.resolve(snapshots.current_mount()).is_mounted)
        mount = self.resolve(snapshots.mount_volume(volumes[0].path))
        self.assertEqual(mount.to_json(), {
            "Path": "/hotbackup/var/lib/mysql", "Device": "hot-backup", "LVPath": "/hotbackup/var/lib/mysql",
            "FileSystem": "mariabackup", "IsMounted": True, "DiskUsage": 123456,
            "MySQLDataPath": "/var/lib/mysql", "MySQLDiskUsage": 123456})
        self.assertTrue(self.resolve(snapshots.current_mount()).virtual)
        self.assertEqual([call.argv[1] for call in self.runner.calls],
                         ["--version", f"--defaults-extra-file={self.defaults}"])
        self.assertFalse(self.resolve(snapshots.unmount()).is_mounted)

    def test_wrong_credentials_are_a_clear_conflict(self):
        self.runner.exit_codes["mariadb"] = 1
        self.runner.stderr["mariadb"] = fixture("mariadb-access-denied.stderr").encode()
        snapshots = self.snapshots()
        error = self.fail_with(snapshots.mount_volume("hot-backup"), Conflict)
        self.assertIn("HotBackupDefaultsFile", str(error))
        self.assertIn("Access denied for user 'nobody'", str(error))
        self.assertFalse(self.resolve(snapshots.current_mount()).is_mounted)

    def test_credentials_reaching_another_server_are_refused(self):
        self.runner.stdout["mariadb"] = b"datadir\t/srv/other/\nlog_bin\tON\n"
        error = self.fail_with(self.snapshots().mount_volume("hot-backup"), Conflict)
        self.assertIn("keeps its data in /srv/other, not in the datadir /var/lib/mysql", str(error))

    def test_missing_tool(self):
        self.runner.exit_codes["mariabackup"] = 127
        self.runner.stderr["mariabackup"] = b"setsid: failed to execute mariabackup: No such file or directory\n"
        error = self.fail_with(self.snapshots().mount_volume("hot-backup"), Conflict)
        self.assertIn("install it (HotBackupTool mariabackup)", str(error))

    def test_a_tool_that_prints_no_version_is_a_conflict(self):
        self.runner.stderr["mariabackup"] = b"/usr/local/bin/mariabackup: wrapper 1.0\n"
        error = self.fail_with(self.snapshots().mount_volume("hot-backup"), Conflict)
        self.assertIn("mariabackup --version printed no version line", str(error))

    def test_binary_log_needed_for_replication(self):
        self.runner.stdout["mariadb"] = b"datadir\t/var/lib/mysql/\nlog_bin\tOFF\n"
        self.resolve(self.snapshots().mount_volume("hot-backup"))  # no replication wanted: fine
        error = self.fail_with(self.snapshots(seed_start_replication=True).mount_volume("hot-backup"), Conflict)
        self.assertIn("turn log_bin on", str(error))

    def test_defaults_file_must_be_private(self):
        os.chmod(self.defaults, 0o644)
        error = self.fail_with(self.snapshots().mount_volume("hot-backup"), Conflict)
        self.assertIn("has mode 0644", str(error))
        self.assertNotIn("secret", str(error))

    def test_defaults_file_in_a_directory_others_can_change_is_refused(self):
        os.chmod(os.path.dirname(self.defaults), 0o777)
        error = self.fail_with(self.snapshots().mount_volume("hot-backup"), Conflict)
        self.assertIn("only root can change", str(error))

    def test_defaults_file_symlink_is_refused(self):
        link = os.path.join(os.path.dirname(self.defaults), "link.cnf")
        os.symlink(self.defaults, link)
        self.defaults = link
        error = self.fail_with(self.snapshots().mount_volume("hot-backup"), Conflict)
        self.assertIn("is a symbolic link", str(error))

    def test_nothing_to_create_or_remove(self):
        snapshots = self.snapshots()
        error = self.fail_with(snapshots.create_snapshot(), Conflict)
        self.assertIn("takes a consistent copy at send time; nothing to create", str(error))
        self.fail_with(snapshots.remove_volume("hot-backup"), Conflict)


class _KilledCommand:
    """A running tool whose end the test decides; terminate() fires at once."""

    def __init__(self) -> None:
        self.result = Deferred()

    def terminate(self) -> Deferred:
        return succeed(None)

    def die(self) -> None:
        self.result.errback(CommandFailed(CommandResult("mbstream", ("mbstream", "-x"), None, 15, b"", b"", False,
                                                        False)))


class ToolStreamTests(SynchronousTestCase):
    """An aborted tool's end is its killer's business: nothing unhandled, and never read as a success."""

    def test_an_aborted_tool_ends_quietly_and_never_succeeds(self):
        command = _KilledCommand()
        stream = ToolStream("mbstream -x", command, -1, None, sync_thread)
        self.successResultOf(Deferred.fromCoroutine(stream.abort()))
        command.die()
        self.assertIsNone(self.successResultOf(command.result))  # consumed: no "Unhandled error in Deferred"
        error = self.failureResultOf(Deferred.fromCoroutine(stream.finished()), AgentError).value
        self.assertEqual(str(error), "mbstream -x was killed: the seed was stopped")

    def test_a_tool_dying_while_awaited_says_so_even_when_aborted_meanwhile(self):
        command = _KilledCommand()
        stream = ToolStream("mbstream -x", command, -1, None, sync_thread)
        finished = Deferred.fromCoroutine(stream.finished())
        self.successResultOf(Deferred.fromCoroutine(stream.abort()))
        command.die()
        self.assertIn("mbstream -x failed: mbstream was killed by signal 15",
                      str(self.failureResultOf(finished, AgentError).value))


class _FixedDisk:
    def __init__(self, size: int):
        self.size = size

    async def usage(self, path: str) -> int:
        return self.size

    def invalidate(self) -> None:
        pass

