"""Replication set-up: validated values, exact SQL quoting, the status read back, the password kept out."""

from __future__ import annotations

import os

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from orchagent.config import Config
from orchagent.errors import Conflict, InvalidInput
from orchagent.host.hotbackup import BinlogPosition
from orchagent.host.replication import (ReplicationSetup, ReplicationSource, parse_vertical, read_password,
                                        replication_sql, sql_string, status_problem)
from tests.support.fake_runner import FakeRunner
from tests.support.storage import sync_thread
from tests.unit.test_hotbackup import private_file

HOSTILE = "p'a\"s\\s;\n\r\x1a`$(x)\\G -- é"  # NUL aside: a password file may not hold one
MARIADB = BinlogPosition("mysql-bin.000001", 880, "0-1-3")
MYSQL = BinlogPosition("mysql-bin.000002", 1232, "c777888a-b6df-11e2-a604-080027635ef5:1-4")
NO_GTID = BinlogPosition("mysql-bin.000002", 1232, "")

RUNNING = b"""*************************** 1. row ***************************
                Slave_IO_State: Waiting for master to send event
                   Master_Host: db1
              Slave_IO_Running: Yes
             Slave_SQL_Running: Yes
                 Last_IO_Errno: 0
                 Last_IO_Error: 
                Last_SQL_Errno: 0
                Last_SQL_Error: 
"""
DENIED = RUNNING.replace(b"Slave_IO_Running: Yes", b"Slave_IO_Running: Connecting").replace(
    b"Last_IO_Errno: 0", b"Last_IO_Errno: 1045").replace(
    b"Last_IO_Error: ", b"Last_IO_Error: error connecting to master 'repl@db1:3306' - retry-time: 60  "
                        b"maximum-retries: 100000  message: Access denied for user 'repl'@'localhost' "
                        b"(using password: YES)")


def unquote(literal: str) -> str:
    """What the server reads from a literal built by sql_string (its escape table, inverted)."""
    assert literal[0] == literal[-1] == "'"
    table = {"\\": "\\", "'": "'", '"': '"', "0": "\0", "n": "\n", "r": "\r", "Z": "\x1a"}
    out, chars = [], iter(literal[1:-1])
    for char in chars:
        if char == "\\":
            out.append(table[next(chars)])
        else:
            assert char not in "'\n\r\0", f"unescaped {char!r}"
            out.append(char)
    return "".join(out)


class QuotingTests(SynchronousTestCase):
    """Any password survives quoting exactly, on one line, with no bare quote."""

    def test_round_trip(self):
        for value in (HOSTILE, HOSTILE + "\0", "", "plain", "'" * 5, "\\" * 5, "a'); DROP USER root; --"):
            literal = sql_string(value)
            self.assertEqual(unquote(literal), value)
            self.assertNotIn("\n", literal)


class SqlTests(SynchronousTestCase):
    """Each flavour gets its own positioning; values go in quoted, never bare."""

    source = ReplicationSource("db1.example.com", 3307, "repl")

    def test_mariadb_gtid(self):
        sql = replication_sql(self.source, HOSTILE, MARIADB)
        self.assertTrue(sql.startswith("\\-\n"))  # the client's sandbox mode first
        self.assertIn("SET SESSION sql_mode='';\n", sql)
        self.assertIn("SET GLOBAL gtid_slave_pos='0-1-3';\n", sql)
        self.assertIn(f"CHANGE MASTER TO MASTER_HOST='db1.example.com', MASTER_PORT=3307, MASTER_USER='repl', "
                      f"MASTER_PASSWORD={sql_string(HOSTILE)}, MASTER_USE_GTID=slave_pos;\n", sql)
        self.assertTrue(sql.endswith("START SLAVE;\n"))
        self.assertEqual(len(sql.splitlines()), 6)  # the password's newline stays escaped

    def test_mysql_gtid(self):
        sql = replication_sql(self.source, "pw", MYSQL)
        self.assertIn("SET GLOBAL gtid_purged='c777888a-b6df-11e2-a604-080027635ef5:1-4';\n", sql)
        self.assertIn("MASTER_AUTO_POSITION=1;\n", sql)

    def test_file_and_position_without_gtid(self):
        sql = replication_sql(self.source, "pw", NO_GTID)
        self.assertIn("MASTER_LOG_FILE='mysql-bin.000002', MASTER_LOG_POS=1232;\n", sql)
        self.assertNotIn("gtid", sql.lower().replace("master_use_gtid", ""))

    def test_values_are_validated(self):
        for host, port, user in (("db1; DROP", 3306, "repl"), ("-oProxy", 3306, "repl"), ("db1", 0, "repl"),
                                 ("db1", "3306", "repl"), ("db1", 3306, "re'pl"), ("db1", 3306, ""),
                                 ("db1", 3306, "a" * 81)):
            with self.assertRaises(InvalidInput):
                ReplicationSource(host, port, user)


class StatusTests(SynchronousTestCase):
    """SHOW SLAVE STATUS tells running, still starting, or why not."""

    def test_running(self):
        self.assertEqual(status_problem(parse_vertical(RUNNING.decode())), "")

    def test_denied(self):
        problem = status_problem(parse_vertical(DENIED.decode()))
        self.assertIn("IO error 1045", problem)
        self.assertIn("Access denied for user 'repl'", problem)

    def test_starting(self):
        starting = RUNNING.replace(b"Slave_IO_Running: Yes", b"Slave_IO_Running: Connecting")
        self.assertIsNone(status_problem(parse_vertical(starting.decode())))

    def test_nothing_configured(self):
        self.assertIn("no replication configured", status_problem(parse_vertical("")))


class SetupTests(SynchronousTestCase):
    """The set-up runs the SQL through MySQLClientCommand on stdin and reports what it found."""

    def setUp(self):
        self.password_file = private_file(self, HOSTILE + "\n")
        self.clock = Clock()
        self.config = Config(seed_start_replication=True, seed_replication_user="repl",
                             seed_replication_password_file=self.password_file, mysql_client_command="mariadb")

    def start(self, status: bytes, exit_code: int = 0):
        runner = FakeRunner(stdout={"MySQLClientCommand": status}, exit_codes={"MySQLClientCommand": exit_code},
                            stderr={"MySQLClientCommand": b"ERROR 1234 (HY000) at line 5: bad " + HOSTILE.encode()})
        setup = ReplicationSetup(self.config, runner, self.clock, sync_thread, wait_seconds=2)
        return runner, Deferred.fromCoroutine(setup.start("db1", 3306, MARIADB))

    def test_running(self):
        runner, started = self.start(RUNNING)
        report = self.successResultOf(started)
        self.assertTrue(report.running)
        self.assertEqual(str(report), "replicating from repl@db1:3306 at GTID 0-1-3 "
                                      "(gtid_slave_pos, MASTER_USE_GTID=slave_pos)")
        sql = runner.calls[0].options["stdin_path"]
        self.assertFalse(os.path.exists(sql))  # the file with the password is gone
        self.assertEqual(runner.inputs[0].decode(), replication_sql(ReplicationSource("db1", 3306, "repl"), HOSTILE,
                                                                    MARIADB))
        self.assertEqual(runner.inputs[1], b"\\-\nSHOW SLAVE STATUS\\G\n")
        self.assertTrue(all(HOSTILE not in " ".join(call.argv) for call in runner.calls))

    def test_denied(self):
        _, started = self.start(DENIED)
        report = self.successResultOf(started)
        self.assertFalse(report.running)
        self.assertIn("replication did not start: IO error 1045", str(report))

    def test_still_connecting_gives_up_in_time(self):
        _, started = self.start(RUNNING.replace(b"Slave_IO_Running: Yes", b"Slave_IO_Running: Connecting"))
        self.assertNoResult(started)
        self.clock.pump([0.5] * 6)
        report = self.successResultOf(started)
        self.assertIn("did not report running within 2 s", report.problem)

    def test_sql_error_is_reported_without_the_password(self):
        _, started = self.start(b"", exit_code=1)
        report = self.successResultOf(started)
        self.assertFalse(report.running)
        self.assertIn("MySQLClientCommand failed with exit status 1", report.problem)
        self.assertNotIn(HOSTILE, report.problem)

    def test_password_file_must_be_private(self):
        os.chmod(self.password_file, 0o640)
        _, started = self.start(RUNNING)
        self.assertIn("has mode 0640", str(self.failureResultOf(started, Conflict).value))


class PasswordFileTests(SynchronousTestCase):
    """The password is the file's first line as written, any character but NUL."""

    def test_reads_exactly(self):
        self.assertEqual(read_password(private_file(self, "pa ss'\\word\n")), "pa ss'\\word")

    def test_refuses_empty_and_binary(self):
        for content in ("", "\n", "a\0b"):
            with self.assertRaises(Conflict):
                read_password(private_file(self, content))
