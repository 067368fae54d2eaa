"""Emptying a datadir: contents only, symlinks unlinked and never followed, refusals for system dirs.
(Mount boundaries need a real mount: tests/integration/test_storage_btrfs.py.)"""

import os

from twisted.trial.unittest import SynchronousTestCase

from orchagent.errors import Conflict
from orchagent.host.datadir import checked_datadir, empty_directory


class EmptyDirectoryTests(SynchronousTestCase):
    def setUp(self):
        self.tmp = os.path.abspath(self.mktemp())
        self.datadir = os.path.join(self.tmp, "datadir")
        self.outside = os.path.join(self.tmp, "outside")
        os.makedirs(os.path.join(self.datadir, "db1", "deep", "er"))
        os.makedirs(self.outside)
        for path in ("ibdata1", "db1/t.ibd", "db1/deep/er/x", ".hidden"):
            with open(os.path.join(self.datadir, path), "w") as f:
                f.write("data")
        with open(os.path.join(self.outside, "keep"), "w") as f:
            f.write("keep")

    def test_contents_go_the_directory_stays(self):
        self.assertEqual(empty_directory(self.datadir), [])
        self.assertTrue(os.path.isdir(self.datadir))
        self.assertEqual(os.listdir(self.datadir), [])

    def test_symlinks_are_unlinked_not_followed(self):
        os.symlink(self.outside, os.path.join(self.datadir, "link-to-dir"))
        os.symlink(os.path.join(self.outside, "keep"), os.path.join(self.datadir, "db1", "link-to-file"))
        empty_directory(self.datadir)
        self.assertEqual(os.listdir(self.datadir), [])
        self.assertEqual(os.listdir(self.outside), ["keep"])

    def test_a_symlinked_datadir_empties_its_target_only(self):
        link = os.path.join(self.tmp, "link")
        os.symlink(self.datadir, link)
        empty_directory(link)
        self.assertEqual(os.listdir(self.datadir), [])
        self.assertTrue(os.path.islink(link))

    def test_listed_mount_points_are_left_alone(self):
        mounted = os.path.join(self.datadir, "db1", "deep")
        self.assertEqual(empty_directory(self.datadir, {mounted}), [mounted])
        self.assertEqual(os.listdir(self.datadir), ["db1"])
        self.assertEqual(os.listdir(os.path.join(self.datadir, "db1")), ["deep"])
        self.assertEqual(os.listdir(os.path.join(mounted, "er")), ["x"])

    def test_system_directories_and_relative_paths_are_refused(self):
        for path in ("/", "/var/lib", "/usr/../", "", "relative/dir", "/etc/."):
            with self.assertRaises(Conflict, msg=path):
                checked_datadir(path)
        self.assertEqual(checked_datadir(self.datadir + "/"), self.datadir)
