"""The lvm backend through the real ProcessRunner and HTTP, with fake ``lvs``/``blkid``/``mount``/
``umount``/``lvremove`` executables first on PATH that replay the recorded outputs and log their argv;
and the injection suite: every storage parameter with hostile values gets a 4xx and runs nothing."""

import os
from urllib.parse import quote

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from orchagent.config import Config
from orchagent.graph import make_host, storage_api
from orchagent.process import ProcessRunner
from orchagent.threads import thread_runner
from tests.support.deferreds import inline
from tests.support.fake_lvm import FakeLvm
from tests.support.fake_runner import FakeRunner
from tests.support.routes import LiveClient, routes_for
from tests.support.storage import StubMySQL

SNAP = "/dev/vg_data/mysql-snap-20200410-0300"
SNAP_MAPPER = "/dev/mapper/vg_data-mysql--snap--20200410--0300"
LVS = ["lvs", "--noheading", "-o", "lv_name,vg_name,lv_path,snap_percent"]


class LvmTestsBase(TestCase):
    """The storage routes served for real with the fake LVM tools as executables on the runner's PATH."""

    def setUp(self):
        self.tmp = os.path.abspath(self.mktemp())
        self.mount_point = os.path.join(self.tmp, "mount")
        self.datadir = os.path.join(self.tmp, "datadir")
        os.makedirs(self.mount_point)
        os.makedirs(os.path.join(self.datadir, "db"))
        open(os.path.join(self.datadir, "ibdata1"), "w").close()
        self.lvm = FakeLvm(os.path.join(self.tmp, "host"))
        runner = ProcessRunner(reactor, default_timeout=20, environ=self.lvm.environ())
        self.addCleanup(runner.stop_all)
        self.runner = FakeRunner.around(runner)
        config = Config(snapshot_mount_point=self.mount_point, snapshot_volumes_filter="-snap-",
                        create_snapshot_command="touch created")
        self.mysql = StubMySQL(self.datadir)
        host = make_host(config, self.runner, reactor, self.mysql, in_thread=thread_runner(reactor),
                         mountinfo_path=self.lvm.mountinfo_path)
        self.client = LiveClient(self, routes_for(storage=storage_api(config, host)), reactor)


class LvmFlowTests(LvmTestsBase):
    """Orchestrator's seed-source sequence on LVM with real processes: integers on the wire, tool errors as 502."""

    @inline
    async def test_orchestrator_seed_source_sequence(self):
        """lvs-snapshots, mountlv of the first, mount, umount, then removelv: exact argv and V1 JSON."""
        # what the snapshot holds: a datadir where the live one is
        snapshot_datadir = os.path.join(self.mount_point, self.datadir.lstrip("/"))
        os.makedirs(os.path.join(snapshot_datadir, "mysql"))
        open(os.path.join(snapshot_datadir, "mysql", "db.opt"), "w").close()

        code, volumes = await self.client.get("/api/lvs-snapshots")
        self.assertEqual((code, volumes[0]["Path"], volumes[0]["SnapshotPercent"]), (200, SNAP, 3.2699999809265137))

        code, mount = await self.client.get("/api/mountlv?lv=" + volumes[0]["Path"])
        self.assertEqual(code, 200)
        self.assertEqual({k: mount[k] for k in ("Path", "Device", "LVPath", "FileSystem", "IsMounted", "MySQLDataPath")},
                         {"Path": self.mount_point, "Device": SNAP_MAPPER, "LVPath": SNAP, "FileSystem": "xfs",
                          "IsMounted": True, "MySQLDataPath": snapshot_datadir})
        self.assertIsInstance(mount["DiskUsage"], int)
        self.assertGreater(mount["DiskUsage"], 0)
        self.assertIsInstance(mount["MySQLDiskUsage"], int)
        self.assertEqual(await self.client.get("/api/mount"), (200, mount))

        code, refused = await self.client.get("/api/removelv?lv=" + SNAP)
        self.assertEqual(code, 409)
        code, unmounted = await self.client.get("/api/umount")
        self.assertEqual((code, unmounted["IsMounted"], unmounted["Device"]), (200, False, ""))
        self.assertEqual(await self.client.get("/api/removelv?lv=" + SNAP), (200, True))

        self.assertEqual([call for call in self.lvm.calls() if call != LVS], [
            ["blkid", SNAP],
            ["mount", "-o", "nouuid", SNAP, self.mount_point],
            ["umount", self.mount_point],
            ["lvremove", "--force", SNAP],
        ])
        code, volumes = await self.client.get("/api/lvs-snapshots")
        self.assertEqual([v["Path"] for v in volumes], ["/dev/vg_data/mysql-snap-20200411-0300"])

    @inline
    async def test_disk_numbers_are_real_integers(self):
        code, used = await self.client.get("/api/mysql-du")
        self.assertEqual(code, 200)
        self.assertIsInstance(used, int)
        self.assertGreaterEqual(used, 4096)  # at least the directory itself
        code, free = await self.client.get("/api/mysql-datadir-available-space")
        self.assertEqual(code, 200)
        self.assertIsInstance(free, int)
        disk = os.statvfs(self.datadir)
        # df's Available column, not Size: close to statvfs (other writers may change it meanwhile)
        self.assertAlmostEqual(free, disk.f_bavail * disk.f_frsize, delta=1 << 30)
        self.assertLess(free, disk.f_blocks * disk.f_frsize)

    @inline
    async def test_lvs_failure_is_a_502_with_the_tool_message(self):
        os.unlink(os.path.join(self.lvm.directory, "lvs.txt"))  # the fake lvs now crashes
        code, body = await self.client.get("/api/lvs")
        self.assertEqual(code, 502)
        self.assertIn("lvs failed with exit status", body["Message"])


HOSTILE = {
    "semicolon": "{valid};touch {marker}",
    "pipe": "{valid}|touch {marker}",
    "substitution": "$(touch {marker})",
    "backticks": "`touch {marker}`",
    "newline": "{valid}\ntouch {marker}",
    "parent": "../../../../{marker}",
    "nul": "{valid}\x00touch",
    "huge": "{valid}" + "a" * 10240,
}


class InjectionTests(LvmTestsBase):
    """Each parameter of every storage route, with each hostile value: a 4xx, no marker, nothing run."""

    def setUp(self):
        super().setUp()
        self.marker = os.path.join(self.tmp, "M")

    async def check(self, path_template: str, valid: str, in_path: bool = False, absent_is_an_error: bool = True):
        for kind, template in HOSTILE.items():
            value = template.format(valid=valid, marker=self.marker)
            path = path_template.format(quote(value, safe="" if in_path else "/"))
            code, body = await self.client.get(path)
            self.assertTrue(400 <= code < 500, f"{path_template} {kind}: {code} {body}")
            self.assertEqual(body["Code"], "ERROR")
        if absent_is_an_error:
            absent = path_template.split("?")[0] if "?" in path_template else path_template.format("")
            code, body = await self.client.get(absent)
            self.assertEqual(code, 400, f"{path_template} absent: {code} {body}")
            self.assertIn("missing", body["Message"])
        self.assertFalse(os.path.exists(self.marker), f"{path_template} created the marker")
        self.assertEqual(self.lvm.calls(), [], f"{path_template} ran a tool")
        self.assertEqual(self.runner.commands, [], f"{path_template} ran a command")

    @inline
    async def test_mountlv(self):
        await self.check("/api/mountlv?lv={}", SNAP)

    @inline
    async def test_removelv(self):
        await self.check("/api/removelv?lv={}", SNAP)

    @inline
    async def test_lv_query(self):
        await self.check("/api/lv?lv={}", SNAP)

    @inline
    async def test_lv_path_parameter(self):
        await self.check("/api/lv/{}", "mysql-snap-20200410-0300", in_path=True)

    @inline
    async def test_lvs_pattern(self):
        # without a pattern, lvs/ is /api/lvs (V1's trailing slash rule): a plain listing
        await self.check("/api/lvs/{}", "snap", in_path=True, absent_is_an_error=False)

    @inline
    async def test_du_path(self):
        await self.check("/api/du?path={}", self.datadir)
