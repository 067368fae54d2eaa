import os
import re
import stat

from twisted.trial.unittest import SynchronousTestCase

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
