"""Relay/binlog logic on fixture indexes and synthetic logs (real MariaDB logs: tests/integration)."""

import base64
import gzip
import io
import os
import shutil

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from orchagent.config import Config
from orchagent.errors import AgentError, InvalidInput, NotFound
from orchagent.host.mysql import MySQL
from orchagent.host.binlogfile import header_end, verify_events
from orchagent.host.relaylog import (
    BinlogCoordinates,
    ReplicationLogs,
    configured_index,
    decode_relaylog,
    find_index,
    gzip_base64,
    log_bytes,
    parse_index,
    resolve_listed,
)
from orchagent.threads import thread_runner
from tests.support.deferreds import Settling
from tests.support.fake_runner import FakeRunner
from tests.support.mysql_fakes import (
    FIXTURES,
    HEADER,
    InlineThreadsReactor,
    binlog,
    event,
    format_description,
    safe_client,
    verifiable_binlog,
)


def unpack(text: str) -> bytes:
    return gzip.decompress(base64.b64decode(text))


class IndexTests(SynchronousTestCase):
    """Relay log index entries resolve relative to the index, absolute ones stay, and the index is found."""

    def test_fixture_index_entries_are_relative_to_the_index(self):
        with open(os.path.join(FIXTURES, "relay-bin.index")) as f:
            text = f.read()
        self.assertEqual(parse_index(text, "/var/log/mysql/relay-bin.index"),
                         ["/var/log/mysql/mysql-relay-bin.000041", "/var/log/mysql/mysql-relay-bin.000042"])

    def test_absolute_entries_stay_absolute(self):  # V1 produced /var/lib/mysql/var/log/...
        self.assertEqual(parse_index("/var/log/relay.000001\n\n  relay.000002  \n", "/var/lib/mysql/relay.index"),
                         ["/var/log/relay.000001", "/var/lib/mysql/relay.000002"])

    def test_configured_index(self):
        self.assertEqual(configured_index({"relay_log_index": "r.index"}, "/d", "relay"), "/d/r.index")
        self.assertEqual(configured_index({"relay_log": "/var/log/mysql/relay-bin"}, "/d", "relay"),
                         "/var/log/mysql/relay-bin.index")
        self.assertEqual(configured_index({"log_basename": "node1"}, "/d", "relay"), "/d/node1-relay-bin.index")
        self.assertEqual(configured_index({"log_bin": "mysql-bin"}, "/d", "binlog"), "/d/mysql-bin.index")
        self.assertEqual(configured_index({"log_bin": None, "log_basename": "n"}, "/d", "binlog"), "/d/n-bin.index")
        self.assertEqual(configured_index({"log_bin_index": "/b/x.index", "log_bin": "y"}, "/d", "binlog"),
                         "/b/x.index")
        self.assertIsNone(configured_index({"log_basename": "n"}, "/d", "binlog"))  # binlog off
        self.assertIsNone(configured_index({}, "/d", "relay"))

    def test_find_index_in_the_datadir(self):
        datadir = self.mktemp()
        os.mkdir(datadir)
        self.assertIsNone(find_index(None, datadir, "relay"))
        shutil.copy(os.path.join(FIXTURES, "relay-bin.index"), os.path.join(datadir, "mysql-relay-bin.index"))
        open(os.path.join(datadir, "mysql-bin.index"), "w").close()
        self.assertEqual(find_index(None, datadir, "relay"), os.path.join(datadir, "mysql-relay-bin.index"))
        self.assertEqual(find_index(None, datadir, "binlog"), os.path.join(datadir, "mysql-bin.index"))
        open(os.path.join(datadir, "other-relay-bin.index"), "w").close()
        self.assertIn("relay_log_index", str(self.assertRaises(AgentError, find_index, None, datadir, "relay")))
        self.assertIsNone(find_index(os.path.join(datadir, "gone.index"), datadir, "relay"))

    def test_resolve_listed(self):
        listed = ["/var/lib/mysql/relay-bin.000001", "/var/log/mysql/mysql-bin.000007"]
        self.assertEqual(resolve_listed("relay-bin.000001", listed), listed[0])
        self.assertEqual(resolve_listed("/var/log/mysql/mysql-bin.000007", listed), listed[1])
        self.assertEqual(resolve_listed("/var/log/mysql/../mysql/mysql-bin.000007", listed), listed[1])
        for name in ("../mysql/relay-bin.000001", "a/relay-bin.000001", "relay\0", "x\ny", "", "a" * 5000):
            self.assertRaises(InvalidInput, resolve_listed, name, listed)
        for name in ("/etc/passwd", "passwd", "relay-bin.000002", "/var/lib/mysql/mysql-bin.000007"):
            self.assertRaises(NotFound, resolve_listed, name, listed)


class ExtractionTests(SynchronousTestCase):
    """Contract C.2.4: one header, events from ``start`` in the first file to ``stop`` in the last."""

    def setUp(self):
        self.files = []
        for number, body in enumerate([b"a" * 50, b"b" * 60, b"c" * 70]):
            path = os.path.abspath(self.mktemp())
            with open(path, "wb") as f:
                f.write(binlog(body, header_payload=bytes([number]) * 100))
            self.files.append(path)

    def extract(self, paths, start, stop):
        return b"".join(log_bytes(paths, start, stop))

    def test_header_end(self):
        self.assertEqual(header_end(binlog(b"")[:23], "f"), 123)
        self.assertRaises(AgentError, header_end, b"\xfebin" + b"\0" * 30, "f")  # not an FDE
        self.assertRaises(AgentError, header_end, b"GIF89a" + b"\0" * 30, "f")
        self.assertRaises(AgentError, header_end, b"\xfebin", "f")

    def test_whole_files(self):
        first = binlog(b"a" * 50, bytes([0]) * 100)
        self.assertEqual(self.extract(self.files, 0, 0), first + b"b" * 60 + b"c" * 70)

    def test_start_prepends_the_first_header(self):
        header = binlog(b"", bytes([0]) * 100)
        self.assertEqual(self.extract(self.files[:1], HEADER + 10, 0), header + b"a" * 40)
        self.assertEqual(self.extract(self.files, HEADER + 45, HEADER + 20), header + b"aaaaa" + b"b" * 60 + b"c" * 20)

    def test_stop_in_a_single_file(self):
        self.assertEqual(self.extract(self.files[:1], HEADER + 5, HEADER + 8)[HEADER:], b"aaa")
        self.assertEqual(len(self.extract(self.files[:1], 0, 10_000)), HEADER + 50)  # like head -c

    def test_positions_outside_the_events_are_refused(self):
        for start, stop in [(5, 0), (HEADER + 51, 0), (HEADER + 10, HEADER + 5)]:
            self.assertRaises(InvalidInput, self.extract, self.files[:1], start, stop)
        self.assertRaises(InvalidInput, self.extract, self.files, 0, 10)  # before the last file's events

    def test_gzip_base64_is_v1s_encoding(self):
        data = os.urandom(5000)
        text = gzip_base64([data[:100], data[100:]])
        self.assertEqual(unpack(text), data)
        lines = text.split("\n")
        self.assertEqual(lines[-1], "")  # GNU base64 ends with a newline
        self.assertTrue(all(len(line) == 76 for line in lines[:-2]))


class DecodeTests(SynchronousTestCase):
    """The relay log upload decodes what orchestrator encodes and refuses malformed bodies."""

    def decode(self, body: bytes, max_bytes: int = 1 << 20) -> bytes:
        path = self.mktemp()
        decode_relaylog(io.BytesIO(body), path, max_bytes)
        with open(path, "rb") as f:
            return f.read()

    def test_round_trip_with_newlines(self):
        log = binlog(os.urandom(300_000))
        self.assertEqual(self.decode(gzip_base64([log]).encode()), log)

    def test_bad_bodies(self):
        log = binlog(b"x" * 1000)
        good = base64.b64encode(gzip.compress(log))
        for body, problem in [
            (b"!!!! not base64", "not base64"),
            (base64.b64encode(b"not gzip at all"), "not gzip"),
            (good[:-8], "truncated"),
            (base64.b64encode(gzip.compress(log) + b"junk"), "trailing"),
            (base64.b64encode(gzip.compress(b"SELECT 1;")), "not a MySQL relay log"),
        ]:
            self.assertIn(problem, str(self.assertRaises(InvalidInput, self.decode, body)))
        bomb = base64.b64encode(gzip.compress(binlog(b"\0" * 10_000_000)))
        self.assertIn("ApplyRelaylogMaxBytes", str(self.assertRaises(InvalidInput, self.decode, bomb, 1_000_000)))


class VerifyEventsTests(SynchronousTestCase):
    """Events must tile the log and carry valid CRC32s when their Format Description event says so."""

    def verify(self, data):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        return verify_events(path)

    def refusal(self, data):
        with self.assertRaises(InvalidInput) as caught:
            self.verify(data)
        return str(caught.exception)

    def test_checksummed_events_verify(self):
        self.assertEqual(self.verify(verifiable_binlog(b"INSERT INTO t VALUES (1)", b"COMMIT")), 3)

    def test_one_flipped_byte_is_refused_naming_the_event(self):
        data = bytearray(verifiable_binlog(b"INSERT INTO t VALUES (1)", b"COMMIT"))
        second = 4 + len(format_description())
        data[second + 30] ^= 0x01
        self.assertEqual(self.refusal(bytes(data)), f"relay log event at offset {second} does not verify "
                                                    "(its CRC32 checksum differs); nothing was applied")

    def test_the_in_use_flag_is_not_part_of_the_checksum(self):
        # the server sets it while writing, clears it on close, and keeps the checksum
        data = bytearray(verifiable_binlog(b"COMMIT"))
        data[4 + 17] |= 0x01
        self.assertEqual(self.verify(bytes(data)), 2)
        data[4 + 18] |= 0x01  # any other flag counts
        self.assertIn("offset 4 does not verify", self.refusal(bytes(data)))

    def test_without_checksums_the_structure_is_checked(self):
        data = verifiable_binlog(b"INSERT INTO t VALUES (1)", checksum=False)
        self.assertEqual(self.verify(data), 2)
        self.assertIn("impossible length", self.refusal(data[:-1]))
        self.assertIn("impossible length", self.refusal(data + b"\0" * 10))

    def test_checksums_follow_the_last_format_description(self):
        data = verifiable_binlog(b"A", checksum=False) + format_description() + event(2, b"B")
        self.assertEqual(self.verify(data), 4)
        self.assertIn("does not verify", self.refusal(data + event(2, b"C\0\0\0\0", checksum=False)))

    def test_servers_before_checksums_have_no_algorithm_byte(self):
        old = b"\xfebin" + format_description(version=b"5.5.62-log") + event(2, b"A", checksum=False)
        self.assertEqual(self.verify(old), 2)

    def test_load_data_events_are_refused(self):
        # mysqlbinlog would write their data to a file and have the client read it
        data = verifiable_binlog(b"COMMIT") + event(17, b"\1\0\0\0rows")
        self.assertIn("is a LOAD DATA event (Begin_load_query)", self.refusal(data))

    def test_malformed_logs(self):
        self.assertIn("before any Format Description", self.refusal(b"\xfebin" + event(2, b"A")))
        unknown = bytearray(verifiable_binlog())
        unknown[-5] = 7
        self.assertIn("unknown checksum algorithm 7", self.refusal(bytes(unknown)))
        self.assertIn("impossible length (0 bytes", self.refusal(verifiable_binlog() + b"\0" * 19))
        self.assertIn("too short", self.refusal(verifiable_binlog() + event(2, b"", checksum=False)))
        self.assertIn("Format Description event of only", self.refusal(b"\xfebin" + event(15, b"x")))


class ReplicationLogsTests(Settling, SynchronousTestCase):
    """The service, over a temp datadir holding the fixture relay index and synthetic logs."""

    def setUp(self):
        self.datadir = os.path.abspath(self.mktemp())
        os.mkdir(self.datadir)
        shutil.copy(os.path.join(FIXTURES, "relay-bin.index"), os.path.join(self.datadir, "mysql-relay-bin.index"))
        for name, body in [("mysql-relay-bin.000041", b"r" * 10), ("mysql-relay-bin.000042", b"s" * 20),
                           ("mysql-bin.000001", b"b" * 30)]:
            with open(os.path.join(self.datadir, name), "wb") as f:
                f.write(binlog(body))
        with open(os.path.join(self.datadir, "mysql-bin.index"), "w") as f:
            f.write("./mysql-bin.000001\n")
        self.temp = os.path.abspath(self.mktemp())
        os.mkdir(self.temp)
        self.runner = FakeRunner({"mysqlbinlog": b"# mysqlbinlog text\nINSERT INTO t VALUES (1);\n"})
        self.logs = self.make()

    def make(self, **options):
        config = Config(mysql_datadir_command="d", **options)
        self.runner.stdout["MySQLDatadirCommand"] = self.datadir.encode()
        reactor = InlineThreadsReactor()
        mysql = MySQL(config, self.runner, reactor, default_option_files=())
        return ReplicationLogs(mysql, self.runner, in_thread=thread_runner(reactor),
                               client_command=config.mysql_client_command,
                               max_apply_bytes=config.apply_relaylog_max_bytes, temp_directory=self.temp)


    def commands_run(self):
        return [name for name in self.runner.names() if name != "MySQLDatadirCommand"]

    def test_index_files_and_end_coordinates(self):
        self.assertEqual(self.settle(self.logs.relay_index_file()), f"{self.datadir}/mysql-relay-bin.index")
        files = [f"{self.datadir}/mysql-relay-bin.000041", f"{self.datadir}/mysql-relay-bin.000042"]
        self.assertEqual(self.settle(self.logs.relay_log_files()), files)
        self.assertEqual(self.settle(self.logs.relay_log_end_coordinates()),
                         BinlogCoordinates(files[1], HEADER + 20, 1))

    def test_empty_index_is_a_clear_error(self):
        open(os.path.join(self.datadir, "mysql-relay-bin.index"), "w").close()
        self.assertEqual(self.settle(self.logs.relay_log_files()), [])
        self.assertIn("lists no relay logs", str(self.fail_with(self.logs.relay_log_end_coordinates(), NotFound)))

    def test_no_relay_index(self):
        os.unlink(os.path.join(self.datadir, "mysql-relay-bin.index"))
        self.assertIn("replica", str(self.fail_with(self.logs.relay_index_file(), NotFound)))

    def test_relaylog_tail_from_a_basename(self):
        data = unpack(self.settle(self.logs.relaylog_tail("mysql-relay-bin.000041", HEADER + 4)))
        self.assertEqual(data, binlog(b"") + b"r" * 6 + b"s" * 20)

    def test_binlog_bytes_from_either_index(self):
        data = unpack(self.settle(self.logs.binlog_bytes(
            ["mysql-bin.000001", f"{self.datadir}/mysql-relay-bin.000042"], 0, 0)))
        self.assertEqual(data, binlog(b"b" * 30) + b"s" * 20)

    def test_binlog_text_runs_mysqlbinlog_with_argv_and_leaves_no_temp_file(self):
        text = unpack(self.settle(self.logs.binlog_text(["mysql-bin.000001"], 4, 200)))
        self.assertEqual(text, b"# mysqlbinlog text\nINSERT INTO t VALUES (1);\n")
        call = self.runner.calls[-1]
        self.assertEqual(call.argv, ("mysqlbinlog", "--no-defaults", f"{self.datadir}/mysql-bin.000001",
                                     "--start-position=4", "--stop-position=200"))
        self.assertEqual(os.listdir(self.temp), [])

    def test_unlisted_names_run_nothing(self):
        for name, kind in [("../../etc/passwd", InvalidInput), ("/etc/passwd", NotFound),
                           ("$(touch M)", NotFound), ("x;y", NotFound)]:
            self.fail_with(self.logs.binlog_text([name], 0, 0), kind)
            self.fail_with(self.logs.relaylog_tail(name, 0), kind)
        self.assertIn("no binlog files", str(self.fail_with(self.logs.binlog_text([], 0, 0), InvalidInput)))
        self.assertEqual(self.commands_run(), [])

    def apply(self, data, size=None):
        body = gzip_base64([data]).encode()
        return Deferred.fromCoroutine(self.logs.apply_relaylog(io.BytesIO(body), size or len(body)))

    def test_apply_in_sandbox_mode(self):
        self.runner.stderr["MySQLClientCommand"] = safe_client
        self.successResultOf(self.apply(verifiable_binlog(b"INSERT INTO t VALUES (1)")))
        self.assertEqual(self.commands_run(), ["MySQLClientCommand"] * 2 + ["mysqlbinlog", "MySQLClientCommand"])
        *probes, mysqlbinlog, client = self.runner.calls[-4:]
        for probe in probes:
            self.assertEqual(probe.argv, ("bash", "-c", "mysql", "orchagent"))
            self.assertEqual(probe.options["check"], False)
        self.assertEqual(mysqlbinlog.argv[:3], ("mysqlbinlog", "--no-defaults", "--verify-binlog-checksum"))
        self.assertEqual(client.argv, ("bash", "-c", "mysql", "orchagent"))
        # the sandbox line comes first, whatever mysqlbinlog printed
        self.assertEqual(self.runner.stdin_seen["MySQLClientCommand"],
                         b"\\-\n" + self.runner.stdout["mysqlbinlog"])
        self.assertEqual(os.listdir(self.temp), [])

    def test_binary_mode_also_shows_client_commands_are_off(self):
        self.runner.stderr["MySQLClientCommand"] = lambda stdin: (
            b"ERROR at line 2: Unknown command '\\.'.\n" if b"\\." in stdin else safe_client(stdin))
        self.successResultOf(self.apply(verifiable_binlog(b"COMMIT")))
        self.assertEqual(self.commands_run()[-1], "MySQLClientCommand")

    def test_a_client_without_sandbox_mode_is_refused(self):
        for said in (b"", b"ERROR at line 1: Unknown command '\\-'.\n", b"ERROR 2002 (HY000): Can't connect"):
            self.runner.stderr["MySQLClientCommand"] = said
            message = str(self.failureResultOf(self.apply(verifiable_binlog(b"COMMIT")), AgentError).value)
            self.assertIn("MySQLClientCommand does not refuse client commands (system, \\!, source...): use "
                          "MariaDB's client from 10.5.25", message)
            self.assertIn(said.decode().strip(), message)
        self.assertEqual(self.commands_run(), ["MySQLClientCommand"] * 3)  # the first probes only
        self.assertEqual(os.listdir(self.temp), [])

    def test_a_client_that_may_read_local_files_is_refused(self):
        said = b"ERROR 1146 (42S02) at line 2: Table 'mysql.orchagent_probe' doesn't exist"
        self.runner.stderr["MySQLClientCommand"] = lambda stdin: (
            said if b"LOAD DATA" in stdin else safe_client(stdin))
        message = str(self.failureResultOf(self.apply(verifiable_binlog(b"COMMIT")), AgentError).value)
        self.assertIn("MySQLClientCommand may read local files for LOAD DATA LOCAL INFILE: "
                      "add --local-infile=0", message)
        self.assertIn(said.decode(), message)
        self.assertEqual(self.commands_run(), ["MySQLClientCommand"] * 2)

    def test_a_log_that_does_not_verify_runs_nothing(self):
        data = bytearray(verifiable_binlog(b"INSERT INTO t VALUES (1)"))
        data[-6] ^= 0x20
        self.assertIn("does not verify", str(self.failureResultOf(self.apply(bytes(data)), InvalidInput).value))
        self.assertEqual(self.commands_run(), [])
        self.assertEqual(os.listdir(self.temp), [])

    def test_apply_refusals_run_nothing_and_leave_no_temp_file(self):
        self.assertIn("ApplyRelaylogMaxBytes", str(self.fail_with(
            self.make(apply_relaylog_max_bytes=100).apply_relaylog(io.BytesIO(b"x" * 101), 101), InvalidInput)))
        self.fail_with(self.logs.apply_relaylog(io.BytesIO(b""), 0), InvalidInput)
        self.fail_with(self.logs.apply_relaylog(io.BytesIO(b"$(touch M)"), 10), InvalidInput)
        self.assertIn("MySQLClientCommand", str(self.fail_with(
            self.make(mysql_client_command="").apply_relaylog(io.BytesIO(b"x"), 1), AgentError)))
        self.assertEqual(self.commands_run(), [])
        self.assertEqual(os.listdir(self.temp), [])

    def test_failed_client_still_removes_temp_files(self):
        self.runner.stderr["MySQLClientCommand"] = safe_client
        self.runner.exit_codes["MySQLClientCommand"] = 1
        self.failureResultOf(self.apply(verifiable_binlog()), AgentError)
        self.assertEqual(os.listdir(self.temp), [])
