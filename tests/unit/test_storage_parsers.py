"""The pure parsers of lvs, blkid, mountinfo, du and df, on the recorded fixtures (contract C.1)."""

import os

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from orchagent.host.disk import parse_df, parse_du
from orchagent.host.lvm import float32, mapper_path, parse_blkid_type, parse_lvs
from orchagent.host.mounts import mount_at, parse_mountinfo
from orchagent.host.snapshots import datadir_candidates
from tests.support.fake_lvm_tools import MOUNTINFO_ESCAPES, fixture


class LvsTests(SynchronousTestCase):
    """lvs rows parse into volumes with every alias, V1's float32 percent, and odd rows do not crash."""

    def test_fixture_rows(self):
        volumes = parse_lvs(fixture("lvs-noheading.txt"))
        self.assertEqual([v.to_json() for v in volumes], [
            {"Name": "lv_root", "GroupName": "vg_sys", "Path": "/dev/vg_sys/lv_root",
             "IsSnapshot": False, "SnapshotPercent": 0.0},
            {"Name": "mysql", "GroupName": "vg_data", "Path": "/dev/vg_data/mysql",
             "IsSnapshot": False, "SnapshotPercent": 0.0},
            {"Name": "mysql-snap-20200410-0300", "GroupName": "vg_data",
             "Path": "/dev/vg_data/mysql-snap-20200410-0300", "IsSnapshot": True,
             "SnapshotPercent": 3.2699999809265137},
            {"Name": "mysql-snap-20200411-0300", "GroupName": "vg_data",
             "Path": "/dev/vg_data/mysql-snap-20200411-0300", "IsSnapshot": True,
             "SnapshotPercent": 0.8500000238418579},
        ])

    def test_aliases_include_vg_slash_name_and_the_mapper_device(self):
        snapshot = parse_lvs(fixture("lvs-noheading.txt"))[2]
        self.assertTrue(snapshot.known_as("vg_data/mysql-snap-20200410-0300"))
        self.assertTrue(snapshot.known_as("/dev/mapper/vg_data-mysql--snap--20200410--0300"))
        self.assertFalse(snapshot.known_as("mysql-snap"))

    def test_float32_precision_as_v1(self):
        self.assertEqual(float32(3.27), 3.2699999809265137)
        self.assertEqual(float32(12.34), 12.34000015258789)
        self.assertEqual(float32(50.0), 50.0)

    def test_short_odd_and_blank_rows_do_not_crash(self):
        text = "\n  pool vg_data\n  thin vg_data  12.50\n  weird vg x y z w\n  a vg /dev/vg/a nan\n\n"
        volumes = parse_lvs(text)
        self.assertEqual([(v.name, v.path, v.is_snapshot, v.snapshot_percent) for v in volumes],
                         [("pool", "", False, 0.0), ("thin", "", True, 12.5)])

    def test_comma_decimal_is_not_a_number(self):
        self.assertEqual(parse_lvs("  s vg /dev/vg/s 3,27\n"), [])

    @given(st.lists(st.tuples(
        st.from_regex(r"[a-z][a-z0-9_+.-]{0,20}", fullmatch=True),
        st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True),
        st.one_of(st.none(), st.decimals(min_value=0, max_value=100, places=2)),
    ), max_size=8))
    def test_round_trip_of_formatted_rows(self, rows):
        text = "".join(f"  {name:<30} {vg:<10} /dev/{vg}/{name:<40} {'' if pct is None else pct:>8}\n"
                       for name, vg, pct in rows)
        volumes = parse_lvs(text)
        self.assertEqual([(v.name, v.group_name, v.path, v.is_snapshot) for v in volumes],
                         [(n, vg, f"/dev/{vg}/{n}", pct is not None) for n, vg, pct in rows])
        for volume, (_, _, pct) in zip(volumes, rows):
            self.assertEqual(volume.snapshot_percent, 0.0 if pct is None else float32(float(pct)))

    def test_mapper_path_doubles_dashes(self):
        self.assertEqual(mapper_path("vg-data", "my-snap"), "/dev/mapper/vg--data-my--snap")


class BlkidTests(SynchronousTestCase):
    """blkid output gives the file system type, never a decoy such as SEC_TYPE or PTTYPE."""

    def test_fixtures(self):
        self.assertEqual(parse_blkid_type(fixture("blkid-xfs.txt")), "xfs")
        self.assertEqual(parse_blkid_type(fixture("blkid-ext4.txt")), "ext4")

    def test_sec_type_and_pttype_are_not_type(self):
        self.assertEqual(parse_blkid_type('/dev/x: SEC_TYPE="msdos" UUID="1" TYPE="vfat"'), "vfat")
        self.assertIsNone(parse_blkid_type('/dev/x: PTUUID="1" PTTYPE="gpt"'))
        self.assertIsNone(parse_blkid_type('/dev/x: SEC_TYPE="ext2"'))
        self.assertIsNone(parse_blkid_type(""))

    @given(st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True), st.sampled_from(["SEC_TYPE", "PTTYPE"]))
    def test_type_found_wherever_the_decoys_are(self, file_system, decoy):
        for line in (f'/dev/x: {decoy}="zz" TYPE="{file_system}"', f'/dev/x: TYPE="{file_system}" {decoy}="zz"'):
            self.assertEqual(parse_blkid_type(line + "\n/dev/y: TYPE=\"other\""), file_system)


class MountinfoTests(SynchronousTestCase):
    """mountinfo parses with its escapes, matches mount points exactly, and the last stacked mount wins."""

    def test_fixture_fields_and_escapes(self):
        entries = parse_mountinfo(fixture("mountinfo-with-snapshot.txt"))
        snapshot = mount_at(entries, "/var/tmp/mysql-mount")
        self.assertEqual((snapshot.source, snapshot.file_system, snapshot.root),
                         ("/dev/mapper/vg_data-mysql--snap--20200410--0300", "xfs", "/"))
        spaced = mount_at(entries, "/srv/with space")
        self.assertEqual(spaced.source, "backup disk")
        btrfs = mount_at(entries, "/mnt/btrfs\\snap")
        self.assertEqual((btrfs.root, btrfs.file_system), ("/snapshots/mysql-snap-1", "btrfs"))

    def test_exact_matching_not_substring(self):
        entries = parse_mountinfo(fixture("mountinfo-with-snapshot.txt"))
        self.assertIsNone(mount_at(entries, "/var/tmp"))
        self.assertIsNone(mount_at(entries, "/var/tmp/mysql"))
        self.assertIsNotNone(mount_at(entries, "/var/tmp/mysql-mount/"))
        self.assertIsNone(mount_at(entries, ""))

    def test_the_last_stacked_mount_wins(self):
        text = ("40 27 0:40 / /mnt rw - tmpfs first rw\n"
                "41 40 0:41 / /mnt rw - tmpfs second rw\n")
        self.assertEqual(mount_at(parse_mountinfo(text), "/mnt").source, "second")

    def test_garbage_lines_are_skipped(self):
        self.assertEqual(parse_mountinfo("nonsense\n1 2 3\n\n"), [])

    @given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                   min_size=1, max_size=40))
    def test_any_mount_point_round_trips(self, name):
        mount_point = "/" + name
        line = f"50 27 0:50 / {mount_point.translate(MOUNTINFO_ESCAPES)} rw shared:1 - tmpfs tmpfs rw\n"
        self.assertEqual(parse_mountinfo(line)[0].mount_point, mount_point)


class DuDfTests(SynchronousTestCase):
    """du and df output parse into integers, or are refused when unusable."""

    def test_fixtures(self):
        self.assertEqual(parse_du(fixture("du-sb.txt")), 123456789012)
        self.assertEqual(parse_df(fixture("df-PT-B1.txt")), 413151978988)

    def test_unusable_output(self):
        self.assertIsNone(parse_du(""))
        self.assertIsNone(parse_du("du: cannot access\n"))
        self.assertIsNone(parse_df("Filesystem Type 1-blocks Used Available Capacity Mounted on\n"))

    def test_df_with_spaces_in_device_and_mount_point(self):
        text = "Filesystem Type 1-blocks Used Available Capacity Mounted on\n" \
               "backup disk tmpfs 1048576 0 1048576 0% /srv/with space\n"
        self.assertEqual(parse_df(text), 1048576)

    @given(st.integers(min_value=0, max_value=2 ** 62), st.integers(min_value=0, max_value=2 ** 62))
    def test_integers_survive(self, used, available):
        self.assertEqual(parse_du(f"{used}\t/var/lib/mysql\n"), used)
        text = f"Filesystem Type 1-blocks Used Available Capacity Mounted on\n" \
               f"/dev/sda1 ext4 {used + available} {used} {available} 5% /\n"
        self.assertEqual(parse_df(text), available)


class DatadirCandidateTests(SynchronousTestCase):
    """Where a datadir may sit inside a mounted snapshot: its suffixes first, then the top."""

    def test_suffixes_then_the_top(self):
        expected = ["/mnt/s/var/lib/mysql", "/mnt/s/lib/mysql", "/mnt/s/mysql", "/mnt/s"]
        self.assertEqual(datadir_candidates("/mnt/s", "/var/lib/mysql/"), expected)
        self.assertEqual(datadir_candidates("/mnt/s/", "/var/lib/mysql"),
                         [os.path.join("/mnt/s/", p) for p in ("var/lib/mysql", "lib/mysql", "mysql", "")])
        self.assertEqual(datadir_candidates("/mnt/s", ""), ["/mnt/s"])
