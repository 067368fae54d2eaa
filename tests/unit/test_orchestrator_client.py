"""The orchestrator-shaped test client decodes as strictly as Go and builds URLs as orchestrator does.

If this client were lenient, the end-to-end tests could pass against an agent that stock
orchestrator cannot decode; these cases pin its strictness.
"""

from twisted.trial.unittest import SynchronousTestCase

from testbed.orchestrator import (
    BOOL, FLOAT64, INT64, LOGICAL_VOLUME, MOUNT, STATUS_POLL, STRING, ContractViolation, GoSlice, HostAgent,
    command_url, error_message, go_decode, zero_value)

AGENT = HostAgent("db-2.example", 3002, "T0KEN")
MOUNT_JSON = (b'{"Path":"/mnt/snap","Device":"/dev/loop0","LVPath":"/s/1","FileSystem":"btrfs","IsMounted":true,'
              b'"DiskUsage":1234,"MySQLDataPath":"/mnt/snap/data","MySQLDiskUsage":1000}')


class URLTests(SynchronousTestCase):
    """The orchestrator client builds URLs and polls status exactly as orchestrator does."""

    def test_token_is_appended_with_question_mark_or_ampersand_and_nothing_is_escaped(self):
        self.assertEqual(command_url(AGENT, "mysql-du"), "http://db-2.example:3002/api/mysql-du?token=T0KEN")
        self.assertEqual(command_url(AGENT, "mountlv?lv=/snapshots/mysql snap"),
                         "http://db-2.example:3002/api/mountlv?lv=/snapshots/mysql snap&token=T0KEN")
        self.assertEqual(command_url(AGENT, "post-copy/?sourceHost=db-1"),
                         "http://db-2.example:3002/api/post-copy/?sourceHost=db-1&token=T0KEN")

    def test_status_poll_is_orchestrators_nine_gets_in_order(self):
        self.assertEqual([path for path, _, _ in STATUS_POLL], [
            "available-snapshots-local", "available-snapshots", "lvs-snapshots", "mount", "mysql-status",
            "mysql-port", "mysql-du", "mysql-datadir-available-space", "mysql-error-log-tail"])


class GoDecodingTests(SynchronousTestCase):
    """The orchestrator client decodes answers with Go's rules, and stricter where our contract is."""

    def test_values_of_the_right_type_decode(self):
        self.assertEqual(go_decode(b"123456789012", INT64), 123456789012)
        self.assertIs(go_decode(b"true", BOOL), True)
        self.assertEqual(go_decode(b'["a",""]', GoSlice(STRING)), ["a", ""])
        self.assertEqual(go_decode(b"7", FLOAT64), 7.0)
        self.assertEqual(go_decode(MOUNT_JSON, MOUNT)["MySQLDiskUsage"], 1000)
        volumes = go_decode(b'[{"Name":"s1","GroupName":"vg","Path":"/dev/vg/s1","IsSnapshot":true,'
                            b'"SnapshotPercent":1.5}]', GoSlice(LOGICAL_VOLUME))
        self.assertEqual(volumes[0]["SnapshotPercent"], 1.5)

    def test_what_go_refuses_is_refused(self):
        for body, go_type in [(b"1000.0", INT64), (b"1e3", INT64), (b'"1000"', INT64), (b"true", INT64),
                              (b"9223372036854775808", INT64), (b"1", BOOL), (b'"true"', BOOL),
                              (b'{"Code":"ERROR"}', GoSlice(STRING)), (b"[1]", GoSlice(STRING)),
                              (b"NaN", FLOAT64), (b'"x"', FLOAT64), (b"[]", MOUNT), (b"", BOOL), (b"true x", BOOL),
                              (MOUNT_JSON.replace(b'"DiskUsage":1234', b'"DiskUsage":1234.0'), MOUNT)]:
            with self.assertRaises(ContractViolation, msg=body):
                go_decode(body, go_type)

    def test_stricter_than_go_where_our_contract_is(self):
        for body, go_type in [(b"null", GoSlice(STRING)), (b"null", INT64),
                              (MOUNT_JSON.replace(b'"IsMounted":true', b'"isMounted":true'), MOUNT),
                              (MOUNT_JSON.replace(b',"MySQLDiskUsage":1000', b""), MOUNT),
                              (MOUNT_JSON.replace(b"}", b',"Extra":1}'), MOUNT)]:
            with self.assertRaises(ContractViolation, msg=body):
                go_decode(body, go_type)

    def test_error_answers_leave_the_zero_value_and_need_the_v1_envelope(self):
        self.assertEqual(error_message(b'{"Code":"ERROR","Message":"no log","Details":null}', "x"), "no log")
        for body in (b'{"error":"no log"}', b"oops", b'{"Code":"ERROR","Message":"m","Details":null,"More":1}'):
            with self.assertRaises(ContractViolation):
                error_message(body, "x")
        self.assertEqual(zero_value(MOUNT)["IsMounted"], False)
        self.assertEqual((zero_value(INT64), zero_value(GoSlice(STRING)), zero_value(STRING)), (0, [], ""))
