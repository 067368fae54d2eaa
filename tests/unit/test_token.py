import os
import stat
from unittest import SkipTest

from twisted.trial.unittest import SynchronousTestCase

from orchagent.config import ConfigError
from orchagent.errors import Conflict
from orchagent.token import Token, read_token_file


class TokenTests(SynchronousTestCase):
    """The token is 64 random hex characters, matched exactly, never shown, and its hint file is owner-only."""

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


class TokenFileTests(SynchronousTestCase):
    """TokenFile gives a fixed token only from a private regular file holding a URL-safe token."""

    GOOD = "Fixed_token-0123456789abcdef"

    def token_file(self, content: str = GOOD + "\n", mode: int = 0o600) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(content)
        os.chmod(path, mode)
        return path

    def assertRefused(self, path: str, problem: str) -> None:
        with self.assertRaises(ConfigError) as caught:
            read_token_file(path)
        message = str(caught.exception)
        self.assertIn(f"TokenFile {path!r}: ", message)
        self.assertIn(problem, message)
        self.assertNotIn(self.GOOD, message)

    def test_reads_the_token_without_its_newline(self):
        token = read_token_file(self.token_file())
        self.assertEqual(token.value, self.GOOD)
        self.assertTrue(token.matches(self.GOOD))

    def test_group_or_world_access_is_refused(self):
        for mode in (0o640, 0o604, 0o620, 0o602):
            self.assertRefused(self.token_file(mode=mode), f"has mode {mode:04o}")

    def test_symlink_is_refused_even_to_a_good_file(self):
        link = self.mktemp()
        os.symlink(self.token_file(), link)
        self.assertRefused(link, "is a symbolic link")

    def test_not_a_regular_file_is_refused(self):
        directory = self.mktemp()
        os.mkdir(directory, 0o700)
        self.assertRefused(directory, "is not a regular file")

    def test_missing_file_is_refused(self):
        self.assertRefused(self.mktemp(), "cannot open: No such file or directory")

    def test_file_of_another_user_is_refused(self):
        if os.geteuid() != 0:
            raise SkipTest("needs root to give the file to another user")
        path = self.token_file()
        os.chown(path, 65534, 65534)
        self.assertRefused(path, "is owned by uid 65534")

    def test_malformed_tokens_are_refused(self):
        for content in ("short-token", "x" * 129, "has space in it 0123", "dot.is.not.allowed.x", "", "\u00e9" * 20,
                        self.GOOD + "\n" + self.GOOD):
            self.assertRefused(self.token_file(content), "must hold one token of 16 to 128 characters")
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
