"""Walking a path from ``/`` by descriptors: symlinks others could plant are never followed."""

import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from orchagent.errors import Conflict
from orchagent.safepath import is_fixed, open_path, real_path


class OpenPathTests(SynchronousTestCase):
    """Only links that nobody but root (or the agent's user) could have placed are followed."""

    def setUp(self):
        self.top = os.path.abspath(self.mktemp())
        self.shared = os.path.join(self.top, "shared")  # stands for a directory the mysql user can write
        os.makedirs(self.shared)
        os.chmod(self.shared, 0o777)
        self.secret = os.path.join(self.top, "secret")
        with open(self.secret, "w") as f:
            f.write("root only")

    def read(self, path, **kwargs):
        fd = open_path(path, os.O_RDONLY, what="the file (SomeKey)", **kwargs)
        with os.fdopen(fd) as f:
            return f.read()

    def test_plain_path(self):
        self.assertEqual(self.read(self.secret), "root only")

    def test_link_in_a_directory_others_can_write_is_refused(self):
        os.symlink(self.secret, os.path.join(self.shared, "log"))
        error = self.assertRaises(Conflict, self.read, os.path.join(self.shared, "log"))
        self.assertIn("SomeKey", str(error))
        self.assertIn("'log' is a symlink", str(error))

    def test_directory_link_in_a_directory_others_can_write_is_refused(self):
        os.symlink(self.top, os.path.join(self.shared, "sub"))
        self.assertRaises(Conflict, self.read, os.path.join(self.shared, "sub", "secret"))

    def test_link_in_a_directory_only_root_can_write_is_followed(self):
        link = os.path.join(self.top, "link")
        os.symlink("shared/../secret", link)
        self.assertEqual(self.read(link), "root only")
        fd = open_path(link, os.O_RDONLY, what="x")
        self.addCleanup(os.close, fd)
        self.assertEqual(real_path(fd), self.secret)

    def test_sticky_directory_protects_only_entries_of_trusted_owners(self):
        os.chmod(self.shared, 0o1777)
        os.symlink(self.secret, os.path.join(self.shared, "log"))
        self.assertEqual(self.read(os.path.join(self.shared, "log")), "root only")
        entry = os.stat(os.path.join(self.shared, "log"), follow_symlinks=False)
        self.assertFalse(is_fixed(os.stat(self.shared), os.stat_result((*entry[:4], 12345, *entry[5:]))))

    def test_fixed_refuses_a_path_through_a_directory_others_can_write(self):
        os.mkdir(os.path.join(self.shared, "mnt"))
        error = self.assertRaises(Conflict, self.read, os.path.join(self.shared, "mnt"), fixed=True)
        self.assertIn("'mnt' is in a directory that a user other than root can change", str(error))
        fd = open_path(self.top, os.O_RDONLY | os.O_DIRECTORY, what="x", fixed=True)
        os.close(fd)

    def test_creating_never_writes_through_a_link(self):
        target = os.path.join(self.top, "target")
        os.symlink(target, os.path.join(self.shared, "new"))
        self.assertRaises(Conflict, open_path, os.path.join(self.shared, "new"),
                          os.O_WRONLY | os.O_CREAT | os.O_EXCL, what="x")
        self.assertFalse(os.path.exists(target))

    def test_missing_and_relative_paths(self):
        self.assertRaises(FileNotFoundError, self.read, os.path.join(self.top, "missing"))
        self.assertRaises(Conflict, self.read, "relative/path")

    def test_root_and_dot_dot(self):
        os.close(open_path("/", os.O_RDONLY | os.O_DIRECTORY, what="x"))
        self.assertEqual(self.read(os.path.join(self.shared, "..", "secret")), "root only")

    def test_mode_of_a_created_file(self):
        fd = open_path(os.path.join(self.top, "made"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, what="x", mode=0o600)
        self.assertEqual(stat.S_IMODE(os.fstat(fd).st_mode), 0o600)
        os.close(fd)
