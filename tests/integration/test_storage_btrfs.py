"""The btrfs snapshot backend for real: a MariaDB datadir in a subvolume of a loop-device btrfs,
snapshots created, listed, mounted, unmounted and removed through the HTTP API (needs root)."""

import errno
import os

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from orchagent.config import Config
from orchagent.graph import make_host, storage_api
from orchagent.host.mysql import MySQL
from orchagent.process import ProcessRunner
from orchagent.threads import thread_runner
from testbed.btrfs import btrfs_filesystem
from testbed.mariadb import MariaDBSandbox
from tests.support.deferreds import inline
from tests.support.root import requires_root
from tests.support.routes import LiveClient, routes_for

FILTER = "mysql-snap-"


@requires_root("a btrfs file system on a loop device; a MariaDB sandbox")
class BtrfsSnapshotTests(TestCase):
    """The btrfs backend on a real loop device: snapshot lifecycle through the API; non-snapshots are not listed."""

    def setUp(self):
        self.fs = btrfs_filesystem(self)
        self.sandbox = MariaDBSandbox(self.fs.subvolume("mysql"))
        self.snapshot_directory = self.fs.directory("snapshots")
        self.mount_point = os.path.abspath(self.mktemp())
        os.makedirs(self.mount_point)
        config = Config(snapshot_backend="btrfs", btrfs_snapshot_directory=self.snapshot_directory,
                        snapshot_volumes_filter=FILTER, snapshot_mount_point=self.mount_point,
                        mysql_config_file=self.sandbox.config_file)
        runner = ProcessRunner(reactor, default_timeout=60)
        self.addCleanup(runner.stop_all)
        host = make_host(config, runner, reactor, MySQL(config, runner, reactor), in_thread=thread_runner(reactor))
        self.client = LiveClient(self, routes_for(storage=storage_api(config, host)), reactor)

    async def get_ok(self, path):
        code, body = await self.client.get(path)
        self.assertEqual(code, 200, f"{path}: {body}")
        return body

    @inline
    async def test_snapshot_lifecycle_through_the_api(self):
        self.sandbox.install()
        self.assertEqual(await self.get_ok("/api/lvs-snapshots"), [])
        self.assertIs(await self.get_ok("/api/create-snapshot"), True)

        volumes = await self.get_ok("/api/lvs-snapshots")
        self.assertEqual(len(volumes), 1)
        snapshot = volumes[0]
        self.assertTrue(snapshot["Name"].startswith(FILTER), snapshot)
        self.assertEqual(snapshot["Path"], os.path.join(self.snapshot_directory, snapshot["Name"]))
        self.assertEqual((snapshot["IsSnapshot"], snapshot["SnapshotPercent"]), (True, 0))
        self.assertTrue(os.path.isfile(os.path.join(snapshot["Path"], "data", "ibdata1")))
        self.assertEqual(await self.get_ok("/api/lv?lv=" + snapshot["Path"]), [snapshot])

        mount = await self.get_ok("/api/mountlv?lv=" + snapshot["Path"])
        data_path = os.path.join(self.mount_point, "data")
        self.assertEqual({k: mount[k] for k in ("Path", "Device", "LVPath", "FileSystem", "IsMounted", "MySQLDataPath")},
                         {"Path": self.mount_point, "Device": self.fs.device, "LVPath": snapshot["Path"],
                          "FileSystem": "btrfs", "IsMounted": True, "MySQLDataPath": data_path})
        for key in ("DiskUsage", "MySQLDiskUsage"):
            self.assertIsInstance(mount[key], int)
            self.assertGreater(mount[key], 10 * 1024 * 1024, key)
        self.assertEqual(await self.get_ok("/api/mount"), mount)
        with self.assertRaises(OSError) as raised:
            open(os.path.join(self.mount_point, "data", "written"), "w")
        self.assertEqual(raised.exception.errno, errno.EROFS)

        self.assertEqual((await self.client.get("/api/removelv?lv=" + snapshot["Path"]))[0], 409)
        self.assertEqual((await self.client.get("/api/mountlv?lv=" + snapshot["Path"]))[0], 409)

        unmounted = await self.get_ok("/api/umount")
        self.assertEqual((unmounted["IsMounted"], unmounted["LVPath"]), (False, ""))
        self.assertIs(await self.get_ok("/api/removelv?lv=" + snapshot["Path"]), True)
        self.assertEqual(await self.get_ok("/api/lvs-snapshots"), [])
        self.assertFalse(os.path.exists(snapshot["Path"]))

    @inline
    async def test_writable_subvolumes_and_plain_directories_are_not_snapshots(self):
        self.fs.subvolume(os.path.join("snapshots", FILTER + "writable"))
        os.makedirs(os.path.join(self.snapshot_directory, FILTER + "plain"))
        self.assertEqual(await self.get_ok("/api/lvs"), [])
        code, body = await self.client.get("/api/mountlv?lv=" + os.path.join(self.snapshot_directory, FILTER + "plain"))
        self.assertEqual(code, 404, body)
