"""Emptying a datadir: contents only, symlinks unlinked and never followed; the guard's refusals.
(Mount boundaries need a real mount: tests/integration/test_storage_btrfs.py.)"""

import os
import shutil

from twisted.trial.unittest import SynchronousTestCase

from orchagent.errors import Conflict
from orchagent.host.datadir import DATADIR_MARKERS, checked_datadir, empty_directory


class EmptyDirectoryTests(SynchronousTestCase):
    """Only the contents go, symlinks are unlinked, listed mount points stay."""

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

    def test_what_is_opened_must_look_like_a_datadir(self):
        # checked on the descriptor it empties: a path swapped after the eraser's check is caught
        os.unlink(os.path.join(self.datadir, "ibdata1"))
        with self.assertRaises(Conflict) as caught:
            empty_directory(self.datadir)
        self.assertIn("(rule: a datadir or empty)", str(caught.exception))
        self.assertEqual(sorted(os.listdir(self.datadir)), [".hidden", "db1"])
        self.assertEqual(empty_directory(self.datadir, require_contents=False), [])
        self.assertEqual(os.listdir(self.datadir), [])

    def test_listed_mount_points_are_left_alone(self):
        mounted = os.path.join(self.datadir, "db1", "deep")
        self.assertEqual(empty_directory(self.datadir, {mounted}), [mounted])
        self.assertEqual(os.listdir(self.datadir), ["db1"])
        self.assertEqual(os.listdir(os.path.join(self.datadir, "db1")), ["deep"])
        self.assertEqual(os.listdir(os.path.join(mounted, "er")), ["x"])



class DatadirGuardTests(SynchronousTestCase):
    """The guard refuses, after resolving links, system directories and directories that are not datadirs."""

    def setUp(self):
        self.tmp = os.path.realpath(self.mktemp())
        os.makedirs(self.tmp)

    def refusal(self, path, **options):
        with self.assertRaises(Conflict, msg=path) as caught:
            checked_datadir(path, **options)
        return str(caught.exception)

    def test_system_directories_are_refused_naming_the_rule(self):
        # /bin, /sbin and /lib resolve to /usr/... on a usr-merged system (Debian 12), /var/run to /run
        merged = os.path.realpath("/bin") == "/usr/bin"
        cases = {"/": "(rule: system directory)", "/usr/../": "(rule: system directory)",
                 "/data": "(rule: top-level directory)", "/var/run": "(rule: top-level directory)",
                 "/var/lib": "(rule: system directory)", "/usr/local": "(rule: system directory)",
                 "/var/tmp/": "(rule: system directory)", "/dev/shm": "(rule: system directory)",
                 "/usr/bin": "inside the system tree /usr/bin", "/usr/sbin": "inside the system tree /usr/sbin",
                 **{f"/{name}": f"inside the system tree /usr/{name}" if merged else "(rule: top-level directory)"
                    for name in ("bin", "sbin", "lib")}, "/usr/lib/x86_64-linux-gnu": "system tree /usr/lib",
                 "/var/log": "inside the system tree /var/log", "/var/cache": "inside the system tree /var/cache",
                 "/etc/mysql": "inside the system tree /etc", "/etc/.": "(rule: top-level directory)",
                 "/usr/local/bin": "inside the system tree /usr/local/bin"}
        for path, expected in cases.items():
            message = self.refusal(path, require_contents=False)
            self.assertIn(expected, message)
            self.assertIn("MySQLDatadirCommand", message)

    def test_a_link_to_a_system_directory_is_refused(self):
        for target in ("/usr/sbin", "/etc", "/var/log/../cache"):
            link = os.path.join(self.tmp, "datadir")
            os.symlink(target, link)
            self.assertIn("system", self.refusal(link))
            os.unlink(link)

    def test_relative_paths_are_refused(self):
        for path in ("", "relative/dir", "./x"):
            self.assertIn("(rule: absolute path)", self.refusal(path))

    def test_a_directory_that_is_not_a_datadir_is_refused_unless_empty(self):
        datadir = os.path.join(self.tmp, "data")
        os.makedirs(os.path.join(datadir, "photos"))
        message = self.refusal(datadir)
        self.assertIn("(rule: a datadir or empty)", message)
        self.assertIn("'photos'", message)
        self.assertEqual(checked_datadir(datadir, require_contents=False), datadir)
        os.rmdir(os.path.join(datadir, "photos"))
        self.assertEqual(checked_datadir(datadir + "/"), datadir)
        self.assertIn("cannot be listed", self.refusal(os.path.join(self.tmp, "missing")))

    def test_what_makes_a_datadir(self):
        datadir = os.path.join(self.tmp, "data")
        for marker, is_directory in DATADIR_MARKERS.items():
            os.makedirs(datadir)
            open(os.path.join(datadir, "db1.frm"), "w").close()
            (os.mkdir if is_directory else lambda p: open(p, "w").close())(os.path.join(datadir, marker))
            self.assertEqual(checked_datadir(datadir), datadir, marker)
            shutil.rmtree(datadir)

    def test_markers_of_the_wrong_kind_do_not_count(self):
        datadir = os.path.join(self.tmp, "data")
        os.makedirs(os.path.join(datadir, "ibdata1"))  # a directory, not InnoDB's file
        os.symlink("/etc", os.path.join(datadir, "mysql"))  # a link, not the schema directory
        self.refusal(datadir)

    def test_a_partial_seed_or_lost_found_counts_as_empty(self):
        datadir = os.path.join(self.tmp, "data")
        os.makedirs(os.path.join(datadir, ".orchagent-seed-17", "tree", "db1"))
        os.makedirs(os.path.join(datadir, "lost+found"))
        self.assertEqual(checked_datadir(datadir), datadir)
        open(os.path.join(datadir, ".orchagent-seed-x"), "w").close()
        self.assertIn("'.orchagent-seed-x'", self.refusal(datadir))
