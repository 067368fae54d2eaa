"""The edge validators: strict grammars, and nothing they accept carries shell or option syntax."""

from __future__ import annotations

import re

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from orchagent.errors import InvalidInput
from orchagent.web import validate

#: What must never get through: option syntax, whitespace, quotes and shell metacharacters.
_UNSAFE = re.compile(r"\A-|[\s'\"$;`\\|&<>(){}*?!~#\x00-\x1f\x7f]")

#: Each validator as a one-argument function.
VALIDATORS = {
    "host": lambda value: validate.host(value, "host"),
    "seed_id": validate.seed_id,
    "position": lambda value: validate.position(value, "start"),
    "bytes_per_second": lambda value: validate.bytes_per_second(value, "bytesPerSecond"),
    "volume_identifier": lambda value: validate.volume_identifier(value, "lv"),
    "absolute_path": lambda value: validate.absolute_path(value, "path"),
    "log_name": validate.log_name,
}

#: Text close to every grammar, so that hypothesis also explores what gets accepted.
_NEAR = st.text(alphabet=st.sampled_from("aZ09-_.:%/@+,= \t\n;$`'\"\\|&"), max_size=40)
_TEXT = st.one_of(st.text(max_size=80), _NEAR,
                  st.builds(lambda a, b: a + b, st.sampled_from(["::1%", "fe80::1%", "10.0.0.1%", "/var/", "db-"]),
                            _NEAR))


class PropertyTests(SynchronousTestCase):
    """Whatever any validator accepts holds no leading '-', whitespace, quotes, '$', ';' or backquote."""

    @settings(max_examples=400, deadline=None)
    @given(name=st.sampled_from(sorted(VALIDATORS)), value=_TEXT)
    def test_nothing_unsafe_is_accepted(self, name, value):
        try:
            result = VALIDATORS[name](value)
        except InvalidInput:
            return
        for accepted in (value, str(result)):
            self.assertIsNone(_UNSAFE.search(accepted), f"{name} accepted {value!r}")


class HostTests(SynchronousTestCase):
    """Hosts are RFC 1123 names, IPv4, or IPv6 with a zone id of letters, digits and _ . - only."""

    def test_accepted(self):
        for value, expected in [("db-1.example.com", "db-1.example.com"), ("db1.", "db1."),
                                ("10.0.0.5", "10.0.0.5"), ("::1", "::1"), ("FE80::1%eth0", "fe80::1%eth0"),
                                ("fe80::1%br-lan.10_x", "fe80::1%br-lan.10_x")]:
            self.assertEqual(validate.host(value, "host"), expected)

    def test_refused(self):
        for value in ["::1%;id", "::1%", "fe80::1%eth0 -o", "::1%a\nb", "::1%$(id)", "10.0.0.1%eth0",
                      "db1.example.com%eth0", "-db1", "db_1", "999.1.1.1", "a..b", "", None, "x" * 254]:
            with self.assertRaises(InvalidInput, msg=repr(value)):
                validate.host(value, "host")


class RateTests(SynchronousTestCase):
    """A rate limit is a whole number of bytes per second from 0 to a bound, nothing else."""

    def test_accepted(self):
        self.assertEqual(validate.bytes_per_second("0", "bytesPerSecond"), 0)
        self.assertEqual(validate.bytes_per_second("4194304", "bytesPerSecond"), 4194304)

    def test_refused(self):
        for value in [None, "", "-1", "1.5", "4M", " 1", "0x10", "9" * 17, str(2 ** 50 + 1)]:
            with self.assertRaises(InvalidInput, msg=repr(value)):
                validate.bytes_per_second(value, "bytesPerSecond")


class PathTests(SynchronousTestCase):
    """Paths, volume identifiers and log names: plain segments only."""

    def test_accepted(self):
        self.assertEqual(validate.absolute_path("/var/lib/mysql/", "path"), "/var/lib/mysql/")
        self.assertEqual(validate.absolute_path("/build/.pybuild/x.d", "path"), "/build/.pybuild/x.d")
        self.assertEqual(validate.volume_identifier("/dev/vg0/lv_snap-1", "lv"), "/dev/vg0/lv_snap-1")
        self.assertEqual(validate.volume_identifier("vg0/lv", "lv"), "vg0/lv")
        self.assertEqual(validate.log_name("db-1-relay-bin.000002"), "db-1-relay-bin.000002")
        self.assertEqual(validate.log_name("/var/log/mysql/mysql-bin.000001"), "/var/log/mysql/mysql-bin.000001")

    def test_refused(self):
        for check, value in [(validate.absolute_path, "relative/dir"), (validate.absolute_path, "/a/../b"),
                             (validate.absolute_path, "/a/./b"), (validate.absolute_path, "/a/.."),
                             (validate.absolute_path, "/a b"), (validate.volume_identifier, "-lv"),
                             (validate.volume_identifier, "vg/-lv"), (validate.volume_identifier, "vg/../x")]:
            with self.assertRaises(InvalidInput, msg=repr(value)):
                check(value, "x")
        for value in ["-bin.000001", "../x", "a/b", "bin 1", "..", ".", ""]:
            with self.assertRaises(InvalidInput, msg=repr(value)):
                validate.log_name(value)
