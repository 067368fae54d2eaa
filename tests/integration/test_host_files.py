"""The mysql user attacks the files a root agent touches for it: a real twistd agent, a real
mysql user acting with ``setpriv`` (needs root)."""

import json
import os
import subprocess
import time

from twisted.internet import reactor
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from orchagent.config import Config
from orchagent.errors import Conflict
from orchagent.graph import make_host, storage_api
from orchagent.host.datadir import empty_directory
from orchagent.host.mounts import read_mountinfo
from orchagent.process import ProcessRunner
from orchagent.threads import thread_runner
from testbed.agent import start_agent
from testbed.btrfs import btrfs_filesystem
from testbed.orchestrator import Orchestrator
from tests.support.deferreds import inline
from tests.support.mysql_user import as_mysql, mysql_directory, skip_reason
from tests.support.routes import LiveClient, routes_for
from tests.support.storage import StubMySQL


class AttackTestCase(SynchronousTestCase):
    """Skips without root or the mysql user; gives each test a directory the mysql user owns."""

    def setUp(self):
        reason = skip_reason()
        if reason:
            raise SkipTest(reason)
        self.logs = mysql_directory(self)


class ErrorLogTests(AttackTestCase):
    """``mysql-error-log-tail`` never reads what the mysql user swaps in for its log."""

    def setUp(self):
        super().setUp()
        self.log = os.path.join(self.logs, "host.err")
        as_mysql('printf "2026-01-01 [Note] ready\\n" > "$1"', self.log)
        self.agent = start_agent({"MySQLErrorLogFile": self.log})
        self.addCleanup(lambda: self.agent.stop())  # the agent a test started last

    def assertRefused(self, *words):
        started = time.monotonic()
        status, body = Orchestrator().answer(self.agent, "mysql-error-log-tail")
        self.assertLess(time.monotonic() - started, 5)  # a fifo must not hang the request
        self.assertEqual(status, 409, body)
        for word in words:
            self.assertIn(word, body["Message"])
        self.assertNotIn("root:", json.dumps(body))

    def test_the_real_log_is_read(self):
        self.assertEqual(Orchestrator().answer(self.agent, "mysql-error-log-tail"), (200, ["2026-01-01 [Note] ready"]))

    def test_log_replaced_by_a_symlink_to_shadow(self):
        as_mysql('rm "$1"; ln -s /etc/shadow "$1"', self.log)
        self.assertRefused("symlink", "MySQLErrorLogFile")

    def test_log_replaced_by_a_fifo(self):
        as_mysql('rm "$1"; mkfifo "$1"', self.log)
        self.assertRefused("a fifo")

    def test_log_replaced_by_a_device(self):
        os.unlink(self.log)
        subprocess.run(["mknod", self.log, "c", "1", "3"], check=True)  # /dev/null's numbers; mysql cannot mknod
        self.assertRefused("a character device")

    def test_log_directory_replaced_by_a_symlink(self):
        inner = os.path.join(self.logs, "inner")
        as_mysql('mkdir "$1"; printf "x\\n" > "$1/shadow"', inner)
        self.agent.stop()
        self.agent = start_agent({"MySQLErrorLogFile": os.path.join(inner, "shadow")})
        self.assertEqual(Orchestrator().answer(self.agent, "mysql-error-log-tail")[0], 200)
        as_mysql('mv "$1" "$1.old"; ln -s /etc "$1"', inner)
        self.assertRefused("'inner' is a symlink")


class TokenHintFileTests(AttackTestCase):
    """A link planted where the token hint goes stops the agent; nothing is written through it."""

    def test_planted_symlink_refuses_the_start(self):
        os.chmod(self.logs, 0o1777)  # a shared directory such as /tmp
        hint = os.path.join(self.logs, "token")
        root_only = os.path.join(os.path.dirname(self.logs), "cron.d")
        os.mkdir(root_only, 0o700)
        target = os.path.join(root_only, "x")
        as_mysql('ln -s "$2" "$1"', hint, target)
        with self.assertRaises(AssertionError) as raised:
            agent = start_agent({"TokenHintFile": hint}, timeout=15)
            agent.stop()
        self.assertIn("TokenHintFile", str(raised.exception))
        self.assertIn("agent exited", str(raised.exception))
        self.assertFalse(os.path.lexists(target))


class DatadirRootTests(AttackTestCase):
    """Emptying the datadir never follows a link the mysql user swapped in for the datadir."""

    def test_datadir_swapped_for_a_symlink(self):
        precious = os.path.join(os.path.dirname(self.logs), "precious")
        os.mkdir(precious)
        with open(os.path.join(precious, "keep"), "w") as f:
            f.write("x")
        datadir = os.path.join(self.logs, "data")
        as_mysql('mkdir "$1"; touch "$1/ibdata1"', datadir)
        self.assertEqual(empty_directory(datadir), [])
        self.assertEqual(os.listdir(datadir), [])
        as_mysql('mv "$1" "$1.old"; ln -s "$2" "$1"', datadir, precious)
        error = self.assertRaises(Conflict, empty_directory, datadir)
        self.assertIn("'data' is a symlink", str(error))
        self.assertEqual(os.listdir(precious), ["keep"])


class MountPointTests(TestCase):
    """``SnapshotMountPoint`` is resolved once, never through a planted link, and holds one mount at a time."""

    def setUp(self):
        reason = skip_reason()
        if reason:
            raise SkipTest(reason)
        self.fs = btrfs_filesystem(self, size_mb=120)
        data = self.fs.subvolume("data")
        snapshots = self.fs.directory("snapshots")
        self.snapshot = os.path.join(snapshots, "mysql-snap-1")
        subprocess.run(["btrfs", "-q", "subvolume", "snapshot", "-r", data, self.snapshot], check=True)
        self.top = os.path.dirname(mysql_directory(self))
        self.victim = os.path.join(self.top, "victim")
        os.mkdir(self.victim)
        self.snapshots = snapshots
        runner = ProcessRunner(reactor, default_timeout=60)
        self.addCleanup(runner.stop_all)
        self.runner = runner

    def client(self, mount_point):
        config = Config(snapshot_backend="btrfs", btrfs_snapshot_directory=self.snapshots,
                        snapshot_volumes_filter="mysql-snap-", snapshot_mount_point=mount_point)
        host = make_host(config, self.runner, reactor, StubMySQL(self.fs.subvolume("db")),
                         in_thread=thread_runner(reactor))
        return LiveClient(self, routes_for(storage=storage_api(config, host)), reactor)

    def mounted_at(self, path):
        return [entry for entry in read_mountinfo() if entry.mount_point == path]

    @inline
    async def test_mount_point_swapped_for_a_symlink_by_the_mysql_user(self):
        mount_point = os.path.join(self.top, "mysql-owned", "mnt")
        as_mysql('mkdir "$1"', mount_point)
        client = self.client(mount_point)
        as_mysql('rmdir "$1"; ln -s "$2" "$1"', mount_point, self.victim)
        code, body = await client.get("/api/mountlv?lv=" + self.snapshot)
        self.assertEqual(code, 409, body)
        self.assertIn("SnapshotMountPoint", body["Message"])
        self.assertEqual(self.mounted_at(self.victim), [])
        self.assertEqual((await client.get("/api/mount"))[0], 409)

    @inline
    async def test_a_mount_point_under_a_directory_others_can_write_is_refused(self):
        mount_point = os.path.join(self.top, "mysql-owned", "mnt")
        as_mysql('mkdir "$1"', mount_point)
        code, body = await self.client(mount_point).get("/api/mountlv?lv=" + self.snapshot)
        self.assertEqual(code, 409, body)
        self.assertIn("a directory that a user other than root can change", body["Message"])
        self.assertEqual(self.mounted_at(mount_point), [])

    @inline
    async def test_mounts_never_stack_under_a_root_made_link(self):
        link = os.path.join(self.top, "link")
        os.symlink(self.victim, link)
        client = self.client(link)
        code, body = await client.get("/api/mountlv?lv=" + self.snapshot)
        self.assertEqual(code, 200, body)
        self.assertEqual((body["Path"], body["IsMounted"], body["LVPath"]), (self.victim, True, self.snapshot))
        code, body = await client.get("/api/mountlv?lv=" + self.snapshot)
        self.assertEqual(code, 409, body)
        self.assertIn("already mounted", body["Message"])
        self.assertEqual(len(self.mounted_at(self.victim)), 1)
        self.assertEqual((await client.get("/api/umount"))[1]["IsMounted"], False)
        self.assertEqual(self.mounted_at(self.victim), [])
