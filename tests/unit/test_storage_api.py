"""The storage routes on the lvm backend, in memory: real route table and resource (StubTreq), the
fake LVM tools run in-process (``FakeRunner``), a fake clock and file work on this thread."""

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from orchagent.config import Config
from orchagent.errors import Conflict
from orchagent.graph import make_host, storage_api
from tests.support.deferreds import Settling
from tests.support.fake_lvm import FakeLvm
from tests.support.fake_runner import FakeRunner
from tests.support.routes import SyncClient, routes_for
from tests.support.storage import StubMySQL, sync_thread

SNAP = "/dev/vg_data/mysql-snap-20200410-0300"
SNAP_MAPPER = "/dev/mapper/vg_data-mysql--snap--20200410--0300"
FIXTURE_DU = 123456789012
FIXTURE_DF_AVAILABLE = 413151978988


class StorageApiTestsBase(Settling, SynchronousTestCase):
    """The storage routes on the fake LVM tools in-process, a fake clock and file work on this thread."""

    def setUp(self):
        self.tmp = os.path.abspath(self.mktemp())
        self.mount_point = os.path.join(self.tmp, "mount")
        self.datadir = os.path.join(self.tmp, "datadir")
        os.makedirs(self.mount_point)
        os.makedirs(os.path.join(self.datadir, "mysql"))
        self.mysql = StubMySQL(self.datadir)
        self.clock = Clock()

    def start(self, file_systems=None, configured=None, **settings):
        self.lvm = FakeLvm(os.path.join(self.tmp, "host"), file_systems)
        configured = configured or {}
        self.runner = FakeRunner(stdout={name: out for name, (code, out) in configured.items()},
                                 exit_codes={name: code for name, (code, out) in configured.items()},
                                 tool=self.lvm.run_in_process)
        config = Config(**{"snapshot_mount_point": self.mount_point, "snapshot_volumes_filter": "-snap-", **settings})
        self.host = make_host(config, self.runner, self.clock, self.mysql, in_thread=sync_thread,
                              mountinfo_path=self.lvm.mountinfo_path)
        self.client = SyncClient(self, routes_for(storage=storage_api(config, self.host)), self.clock)
        return self.client

    def not_mounted(self):
        return {"Path": self.mount_point, "Device": "", "LVPath": "", "FileSystem": "", "IsMounted": False,
                "DiskUsage": 0, "MySQLDataPath": "", "MySQLDiskUsage": 0}


class PollTests(StorageApiTestsBase):
    """What orchestrator polls (snapshot hosts, lvs, mount, mysql-du) answers in V1 shapes and is cached briefly."""

    def test_snapshot_hosts_are_empty_lists_without_commands(self):
        client = self.start()
        self.assertEqual(client.get("/api/available-snapshots-local"), (200, []))
        self.assertEqual(client.get("/api/available-snapshots"), (200, []))
        self.assertEqual(self.runner.commands, [])

    def test_snapshot_hosts_are_the_lines_of_the_commands(self):
        client = self.start(
            configured={"AvailableSnapshotHostsCommand": (0, "db1\ndb2\n\n"),
                        "AvailableLocalSnapshotHostsCommand": (0, "\n")},
            available_snapshot_hosts_command="list-all", available_local_snapshot_hosts_command="list-local")
        self.assertEqual(client.get("/api/available-snapshots"), (200, ["db1", "db2"]))
        self.assertEqual(client.get("/api/available-snapshots-local"), (200, []))

    def test_configured_seed_sources_answer_without_commands(self):
        """Orchestrator shows local hosts as green Seed buttons and the rest of "anywhere" as yellow ones."""
        client = self.start(local_seed_source_hosts=("db1", "db2"), remote_seed_source_hosts=("db9", "db1"))
        self.assertEqual(client.get("/api/available-snapshots-local"), (200, ["db1", "db2"]))
        self.assertEqual(client.get("/api/available-snapshots"), (200, ["db1", "db2", "db9"]))
        self.assertEqual(self.runner.commands, [])

    def test_the_v1_commands_win_over_configured_seed_sources(self):
        client = self.start(configured={"AvailableSnapshotHostsCommand": (0, "db7\n")},
                            available_snapshot_hosts_command="list-all", remote_seed_source_hosts=("db9",))
        self.assertEqual(client.get("/api/available-snapshots"), (200, ["db7"]))

    def test_lvs_snapshots_v1_shape_with_float32_percent(self):
        code, body = self.start().get("/api/lvs-snapshots")
        self.assertEqual(code, 200)
        self.assertEqual(body[0], {"Name": "mysql-snap-20200410-0300", "GroupName": "vg_data", "Path": SNAP,
                                   "IsSnapshot": True, "SnapshotPercent": 3.2699999809265137})
        self.assertEqual([v["Name"] for v in body], ["mysql-snap-20200410-0300", "mysql-snap-20200411-0300"])
        self.assertEqual(self.runner.commands, [["lvs", "--noheading", "-o", "lv_name,vg_name,lv_path,snap_percent"]])

    def test_mount_when_nothing_is_mounted(self):
        self.assertEqual(self.start().get("/api/mount"), (200, self.not_mounted()))

    def test_mysql_du_and_free_space_are_integers_of_the_datadir(self):
        client = self.start()
        self.assertEqual(client.get("/api/mysql-du"), (200, FIXTURE_DU))
        self.assertEqual(client.get("/api/mysql-datadir-available-space"), (200, FIXTURE_DF_AVAILABLE))
        self.assertEqual(self.runner.commands, [["du", "-sb", self.datadir], ["df", "-PT", "-B", "1", self.datadir]])

    def test_mysql_du_without_a_datadir_is_an_error_not_the_working_directory(self):
        self.mysql.data_directory = None
        code, body = self.start().get("/api/mysql-du")
        self.assertEqual(code, 500)
        self.assertIn("cannot tell where MySQL keeps its data", body["Message"])
        self.assertEqual(self.runner.commands, [])

    def test_du_is_cached_briefly_and_invalidated_by_mounting(self):
        client = self.start()
        client.get("/api/mysql-du")
        client.get("/api/mysql-du")
        self.assertEqual(self.runner.commands.count(["du", "-sb", self.datadir]), 1)
        self.clock.advance(6)
        client.get("/api/mysql-du")
        self.assertEqual(self.runner.commands.count(["du", "-sb", self.datadir]), 2)
        client.get("/api/mountlv?lv=" + SNAP)
        client.get("/api/mysql-du")
        self.assertEqual(self.runner.commands.count(["du", "-sb", self.datadir]), 3)


class VolumeTests(StorageApiTestsBase):
    """Logical volumes are listed, filtered and found by every name orchestrator may use."""

    def test_lvs_lists_everything_and_pattern_filters_by_name(self):
        client = self.start()
        self.assertEqual(len(client.get("/api/lvs")[1]), 4)
        self.assertEqual([v["Name"] for v in client.get("/api/lvs/0411")[1]], ["mysql-snap-20200411-0300"])
        self.assertEqual(client.get("/api/lvs/nothing-like-it"), (200, []))

    def test_lv_by_name_path_group_or_mapper(self):
        client = self.start()
        for identifier in (SNAP, "vg_data/mysql-snap-20200410-0300", "mysql-snap-20200410-0300", SNAP_MAPPER):
            code, body = client.get("/api/lv?lv=" + identifier)
            self.assertEqual((code, [v["Path"] for v in body]), (200, [SNAP]), identifier)
        self.assertEqual([v["Path"] for v in client.get("/api/lv/mysql")[1]], ["/dev/vg_data/mysql"])

    def test_unknown_lv_is_404_and_malformed_is_400(self):
        client = self.start()
        code, body = client.get("/api/lv?lv=/dev/vg_data/nosuch")
        self.assertEqual(code, 404)
        self.assertIn("no logical volume /dev/vg_data/nosuch", body["Message"])
        self.assertEqual(client.get("/api/lv?lv=a%20b")[0], 400)
        self.assertEqual(client.get("/api/lv")[0], 400)


class MountTests(StorageApiTestsBase):
    """mountlv/umount/removelv mount only snapshots, on a free mount point, with the right options."""

    def test_mountlv_xfs_uses_nouuid_and_reports_the_v1_mount(self):
        os.makedirs(os.path.join(self.mount_point, "datadir"))
        open(os.path.join(self.mount_point, "datadir", "ibdata1"), "w").close()
        client = self.start()
        code, body = client.get("/api/mountlv?lv=" + SNAP)
        self.assertEqual(code, 200)
        self.assertEqual(body, {
            "Path": self.mount_point, "Device": SNAP_MAPPER, "LVPath": SNAP, "FileSystem": "xfs",
            "IsMounted": True, "DiskUsage": FIXTURE_DU,
            "MySQLDataPath": os.path.join(self.mount_point, "datadir"), "MySQLDiskUsage": FIXTURE_DU})
        self.assertEqual(self.lvm.calls()[1:3], [["blkid", SNAP], ["mount", "-o", "nouuid", SNAP, self.mount_point]])
        self.assertEqual(client.get("/api/mount"), (200, body))

    def test_mountlv_other_file_systems_without_options(self):
        client = self.start(file_systems={SNAP: "ext4"})
        self.assertEqual(client.get("/api/mountlv?lv=" + SNAP)[1]["FileSystem"], "ext4")
        self.assertIn(["mount", SNAP, self.mount_point], self.lvm.calls())

    def test_mountlv_without_a_file_system_is_refused(self):
        client = self.start(file_systems={SNAP: ""})
        code, body = client.get("/api/mountlv?lv=" + SNAP)
        self.assertEqual(code, 409)
        self.assertIn("blkid finds no file system", body["Message"])
        self.assertNotIn("mount", [call[0] for call in self.lvm.calls()])

    def test_mountlv_over_an_occupied_mount_point_is_409(self):
        client = self.start()
        client.get("/api/mountlv?lv=" + SNAP)
        code, body = client.get("/api/mountlv?lv=/dev/vg_data/mysql-snap-20200411-0300")
        self.assertEqual(code, 409)
        self.assertIn(f"{SNAP_MAPPER} is already mounted", body["Message"])
        self.assertEqual([c[0] for c in self.lvm.calls()].count("mount"), 1)

    def test_mountlv_of_a_volume_that_is_not_a_snapshot_is_409(self):
        code, body = self.start().get("/api/mountlv?lv=/dev/vg_data/mysql")
        self.assertEqual(code, 409)
        self.assertIn("not a snapshot volume", body["Message"])

    def test_removelv_refuses_the_mounted_snapshot_then_removes_it_after_umount(self):
        client = self.start()
        client.get("/api/mountlv?lv=" + SNAP)
        code, body = client.get("/api/removelv?lv=" + SNAP)
        self.assertEqual(code, 409)
        self.assertIn("unmount it first", body["Message"])
        self.assertEqual(client.get("/api/umount"), (200, self.not_mounted()))
        self.assertEqual(client.get("/api/removelv?lv=" + SNAP), (200, True))
        self.assertEqual([v["Path"] for v in client.get("/api/lvs-snapshots")[1]],
                         ["/dev/vg_data/mysql-snap-20200411-0300"])
        tools = [call for call in self.lvm.calls() if call[0] != "lvs"]
        self.assertEqual(tools, [["blkid", SNAP], ["mount", "-o", "nouuid", SNAP, self.mount_point],
                                 ["umount", self.mount_point], ["lvremove", "--force", SNAP]])

    def test_umount_with_nothing_mounted_runs_nothing(self):
        client = self.start()
        self.assertEqual(client.get("/api/umount"), (200, self.not_mounted()))
        self.assertEqual(self.lvm.calls(), [])

    def test_mount_point_not_configured(self):
        client = self.start(snapshot_mount_point="")
        code, body = client.get("/api/mountlv?lv=" + SNAP)
        self.assertEqual(code, 500)
        self.assertIn("SnapshotMountPoint is not set", body["Message"])


class CommandTests(StorageApiTestsBase):
    """Snapshot creation and datadir deletion run their commands only when safe, and refuse what is not a datadir."""

    def test_create_snapshot_runs_the_configured_command(self):
        client = self.start(create_snapshot_command="make-snapshot")
        self.assertEqual(client.get("/api/create-snapshot"), (200, True))
        self.assertEqual(self.runner.commands, [["configured", "CreateSnapshotCommand"]])

    def test_create_snapshot_on_lvm_needs_the_command(self):
        code, body = self.start().get("/api/create-snapshot")
        self.assertEqual(code, 500)
        self.assertIn("needs CreateSnapshotCommand", body["Message"])

    def test_delete_datadir_refused_while_mysql_runs(self):
        open(os.path.join(self.datadir, "ibdata1"), "w").close()
        self.mysql.running = True
        code, body = self.start().get("/api/delete-mysql-datadir")
        self.assertEqual(code, 409)
        self.assertIn("MySQL is running", body["Message"])
        self.assertTrue(os.path.exists(os.path.join(self.datadir, "ibdata1")))

    def test_delete_datadir_empties_it_built_in(self):
        open(os.path.join(self.datadir, "ibdata1"), "w").close()
        open(os.path.join(self.datadir, "mysql", "user.frm"), "w").close()
        self.assertEqual(self.start().get("/api/delete-mysql-datadir"), (200, True))
        self.assertEqual(os.listdir(self.datadir), [])
        self.assertEqual(self.runner.commands, [])

    def test_delete_datadir_runs_the_configured_command_without_arguments(self):
        open(os.path.join(self.datadir, "ibdata1"), "w").close()
        client = self.start(mysql_delete_datadir_content_command="rm -rf /var/lib/mysql/*")
        self.assertEqual(client.get("/api/delete-mysql-datadir"), (200, True))
        self.assertEqual(self.runner.commands, [["configured", "MySQLDeleteDatadirContentCommand"]])

    def test_delete_datadir_refuses_what_is_not_a_datadir_and_accepts_an_emptied_one(self):
        os.rmdir(os.path.join(self.datadir, "mysql"))
        open(os.path.join(self.datadir, "notes.txt"), "w").close()
        client = self.start(mysql_delete_datadir_content_command="rm -rf /var/lib/mysql/*")
        code, body = client.get("/api/delete-mysql-datadir")
        self.assertEqual(code, 409)
        self.assertIn("(rule: a datadir or empty)", body["Message"])
        self.assertEqual(os.listdir(self.datadir), ["notes.txt"])
        self.assertEqual(self.runner.commands, [])
        os.unlink(os.path.join(self.datadir, "notes.txt"))
        os.makedirs(os.path.join(self.datadir, ".orchagent-seed-3", "tree"))  # a partial seed's staging
        client = self.start()
        self.assertEqual(client.get("/api/delete-mysql-datadir"), (200, True))
        self.assertEqual(os.listdir(self.datadir), [])
        self.assertEqual(client.get("/api/delete-mysql-datadir"), (200, True))  # orchestrator's retry

    def test_a_failed_seeds_copy_is_emptied_even_when_it_does_not_look_like_a_datadir(self):
        os.rmdir(os.path.join(self.datadir, "mysql"))
        os.makedirs(os.path.join(self.datadir, "db1"))  # what a receive command extracted before it failed
        self.start()
        self.assertIn("(rule: a datadir or empty)", str(self.fail_with(self.host.datadir.empty(), Conflict)))
        self.settle(self.host.datadir.empty(after_failed_seed=True))
        self.assertEqual(os.listdir(self.datadir), [])
        self.mysql.data_directory = "/usr/bin"  # the system rules still hold
        self.fail_with(self.host.datadir.empty(after_failed_seed=True), Conflict)

    def test_delete_datadir_refuses_system_directories(self):
        self.mysql.data_directory = "/var/lib/../../"
        code, body = self.start().get("/api/delete-mysql-datadir")
        self.assertEqual(code, 409)
        self.assertIn("system directory /", body["Message"])


class DuTests(StorageApiTestsBase):
    """mysql-du answers only for paths inside the datadir, the mount point or the allowed roots."""

    def test_inside_the_datadir_or_the_mount_point(self):
        client = self.start()
        self.assertEqual(client.get("/api/du?path=" + self.datadir + "/mysql"), (200, FIXTURE_DU))
        self.assertEqual(client.get("/api/du?path=" + self.mount_point), (200, FIXTURE_DU))
        self.assertEqual(self.runner.commands, [["du", "-sb", os.path.join(self.datadir, "mysql")],
                                                ["du", "-sb", self.mount_point]])

    def test_allowed_path_roots(self):
        other = os.path.join(self.tmp, "backups")
        os.makedirs(other)
        client = self.start(allowed_path_roots=(other,))
        self.assertEqual(client.get("/api/du?path=" + other), (200, FIXTURE_DU))

    def test_outside_missing_and_escaping_paths(self):
        os.symlink("/etc", os.path.join(self.datadir, "escape"))
        client = self.start()
        for path, code in (("/etc", 400), (self.datadir + "/../host", 400), (self.datadir + "/escape", 400),
                           (self.datadir + "/nosuch", 404), ("", 400), ("datadir", 400)):
            self.assertEqual(client.get("/api/du?path=" + path)[0], code, path)
        self.assertEqual(self.runner.commands, [])
