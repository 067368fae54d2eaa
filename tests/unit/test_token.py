import os
import re
import stat

from twisted.trial.unittest import SynchronousTestCase

from orchagent.errors import Conflict
from orchagent.token import Token


class TokenTests(SynchronousTestCase):
    def test_64_lowercase_hex_and_new_every_time(self):
        a, b = Token(), Token()
        self.assertRegex(a.value, r"\A[0-9a-f]{64}\Z")
        self.assertNotEqual(a.value, b.value)

    def test_matches_only_the_exact_value(self):
        t = Token("a" * 64)
        self.assertTrue(t.matches("a" * 64))
        for wrong in (None, "", "a" * 63, "A" * 64, "a" * 64 + " ", "\u00e9" * 64):
            self.assertFalse(t.matches(wrong), wrong)

    def test_repr_hides_the_value(self):
        t = Token()
        self.assertNotIn(t.value, repr(t))

    def test_hint_file_is_owner_only_even_if_it_existed(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("old")
        os.chmod(path, 0o644)
        t = Token()
        t.write_hint(path)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path) as f:
            self.assertEqual(f.read(), t.value + "\n")


class HintFileSafetyTests(SynchronousTestCase):
    """The hint is replaced atomically and never written through a planted link."""

    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, "token")

    def test_planted_symlink_is_refused_and_not_followed(self):
        target = os.path.join(self.directory, "cron-job")
        os.symlink(target, self.path)
        error = self.assertRaises(Conflict, Token().write_hint, self.path)
        self.assertIn("TokenHintFile", str(error))
        self.assertFalse(os.path.lexists(target))
        self.assertEqual(sorted(os.listdir(self.directory)), ["token"])  # no temporary file left

    def test_replaces_the_old_file_instead_of_writing_into_it(self):
        with open(self.path, "w") as f:
            f.write("old")
        os.link(self.path, os.path.join(self.directory, "other-name"))
        t = Token()
        t.write_hint(self.path)
        with open(os.path.join(self.directory, "other-name")) as f:
            self.assertEqual(f.read(), "old")
        self.assertEqual(sorted(os.listdir(self.directory)), ["other-name", "token"])

    def test_relative_path(self):
        t = Token()
        self.patch(os, "getcwd", lambda: self.directory)
        t.write_hint(os.path.relpath(self.path))
        self.assertTrue(os.path.exists(self.path))
