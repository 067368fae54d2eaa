"""The MySQL routes through the real route table and resource (StubTreq): V1 shapes, validation."""

import base64
import gzip
import os
import shutil
from urllib.parse import quote

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from orchagent.config import Config
from orchagent.host.mysql import MySQL
from tests.support.fake_runner import FakeRunner
from tests.support.mysql_fakes import (
    FIXTURES, HEADER, FakeProbe, InlineThreadsReactor, binlog, mysql_routes, safe_client, verifiable_binlog)
from tests.support.routes import SyncClient


class MySQLRoutesTests(SynchronousTestCase):
    """The MySQL routes through the real route table: V1 shapes, command failures as 502, relay log apply limits."""

    def setUp(self):
        self.datadir = os.path.abspath(self.mktemp())
        os.mkdir(self.datadir)
        shutil.copy(os.path.join(FIXTURES, "relay-bin.index"), os.path.join(self.datadir, "mysql-relay-bin.index"))
        for name in ("mysql-relay-bin.000041", "mysql-relay-bin.000042"):
            with open(os.path.join(self.datadir, name), "wb") as f:
                f.write(binlog(b"x" * 20))
        with open(os.path.join(self.datadir, "host.err"), "w") as f:
            f.write("".join(f"[Note] line {i}\n" for i in range(40)))
        self.my_cnf = os.path.join(self.datadir, "my.cnf")
        with open(self.my_cnf, "w") as f:
            f.write(f"[mysqld]\ndatadir={self.datadir}/\nport=3307\nlog_error=host.err\n")
        self.client = self.make()

    def make(self, runner=None, **keys):
        config = Config(mysql_config_file=self.my_cnf, mysql_service_status_command="status",
                        mysql_service_start_command="start", mysql_service_stop_command="stop",
                        post_copy_command="post-copy", error_log_tail_lines=3, **keys)
        self.runner = runner or FakeRunner()
        reactor = InlineThreadsReactor()
        mysql = MySQL(config, self.runner, reactor, probe_host=FakeProbe())
        return SyncClient(self, mysql_routes(config, self.runner, reactor, mysql), Clock())

    def call(self, path, method="GET", data=None, headers=None, client=None):
        return (client or self.client).request(path, method, data, headers)

    def test_poll_shapes(self):
        self.assertEqual(self.call("/api/mysql-status"), (200, b"true"))
        self.assertEqual(self.call("/api/mysql-port"), (200, b"3307"))
        self.assertEqual(self.call("/api/mysql-error-log-tail"),
                         (200, b'["[Note] line 37","[Note] line 38","[Note] line 39"]'))

    def test_status_is_false_not_an_error(self):
        client = self.make(FakeRunner(exit_codes={"MySQLServiceStatusCommand": 1}))
        self.assertEqual(self.call("/api/mysql-status", client=client), (200, b"false"))

    def test_status_is_true_when_it_cannot_tell(self):
        client = self.make(FakeRunner(timeouts=("MySQLServiceStatusCommand",)))
        self.assertEqual(self.call("/api/mysql-status", client=client), (200, b"true"))

    def test_commands_answer_true(self):
        for path in ("/api/mysql-stop", "/api/mysql-start", "/api/post-copy/?sourceHost=10.0.0.2"):
            self.assertEqual(self.call(path), (200, b"true"))
        self.assertEqual(self.runner.names(), ["MySQLServiceStopCommand", "MySQLServiceStartCommand", "PostCopyCommand"])
        self.assertEqual(self.runner.calls[-1].options["env"], {"ORCHAGENT_SOURCE_HOST": "10.0.0.2"})

    def test_failed_command_is_502(self):
        client = self.make(FakeRunner(exit_codes={"MySQLServiceStartCommand": 1}))
        code, body = self.call("/api/mysql-start", client=client)
        self.assertEqual(code, 502)
        self.assertIn(b'"Code":"ERROR"', body)

    def test_source_hosts(self):
        for host in ("db-2", "db2.example.com", "fe80::1", "192.168.0.7"):
            self.assertEqual(self.call(f"/api/post-copy/?sourceHost={quote(host)}")[0], 200, host)
        for host in ("db 2", "-db", "1.5", "a..b", "db_2;x", "x" * 254):
            self.assertEqual(self.call(f"/api/post-copy/?sourceHost={quote(host)}")[0], 400, host)
        self.assertEqual(len(self.runner.calls), 4)

    def test_relay_routes(self):
        files = [f"{self.datadir}/mysql-relay-bin.000041", f"{self.datadir}/mysql-relay-bin.000042"]
        self.assertEqual(self.call("/api/mysql-relay-log-index-file"),
                         (200, f'"{self.datadir}/mysql-relay-bin.index"'.encode()))
        self.assertEqual(self.call("/api/mysql-relay-log-files"), (200, f'["{files[0]}","{files[1]}"]'.encode()))
        self.assertEqual(self.call("/api/mysql-relay-log-end-coordinates"),
                         (200, f'{{"LogFile":"{files[1]}","LogPos":{HEADER + 20},"Type":1}}'.encode()))
        code, body = self.call(f"/api/mysql-relaylog-contents-tail/mysql-relay-bin.000042/{HEADER + 15}")
        self.assertEqual(code, 200)
        self.assertEqual(gzip.decompress(base64.b64decode(body[1:-1].replace(b"\\n", b"\n"))),
                         binlog(b"") + b"x" * 5)

    def test_empty_index_lists_nothing_and_has_no_end(self):
        open(os.path.join(self.datadir, "mysql-relay-bin.index"), "w").close()
        self.assertEqual(self.call("/api/mysql-relay-log-files"), (200, b"[]"))
        self.assertEqual(self.call("/api/mysql-relay-log-end-coordinates")[0], 404)

    def test_positions_must_be_integers(self):
        for value in ("x", "-1", "1.5", "1e3", "0x10", "99999999999999999999", "%201"):
            for path in (f"/api/mysql-binlog-contents?binlog=mysql-relay-bin.000041&start={value}",
                         f"/api/mysql-binlog-binary-contents?binlog=mysql-relay-bin.000041&stop={value}",
                         f"/api/mysql-relaylog-contents-tail/mysql-relay-bin.000041/{value}"):
                self.assertEqual(self.call(path)[0], 400, path)
        self.assertEqual(self.runner.calls, [])

    def test_apply_body_limit_checked_from_content_length(self):
        client = self.make(apply_relaylog_max_bytes=1000)
        code, body = self.call("/api/apply-relaylog-contents", "POST", data=b"A" * 1001, client=client)
        self.assertEqual(code, 400)
        self.assertIn(b"ApplyRelaylogMaxBytes", body)
        self.assertEqual(self.runner.calls, [])

    def test_apply(self):
        self.runner.stderr["MySQLClientCommand"] = safe_client
        body = base64.encodebytes(gzip.compress(verifiable_binlog(b"INSERT INTO t VALUES (1)")))
        self.assertEqual(self.call("/api/apply-relaylog-contents", "POST", data=body,
                                   headers={"Content-Type": ["text/plain"]}), (200, b'"OK"'))
        self.assertEqual(self.runner.names(), ["MySQLClientCommand"] * 2 + ["mysqlbinlog", "MySQLClientCommand"])

    def test_apply_of_a_log_that_does_not_verify_is_bad_input(self):
        body = base64.encodebytes(gzip.compress(verifiable_binlog(b"INSERT INTO t VALUES (1)")[:-1] + b"?"))
        code, answer = self.call("/api/apply-relaylog-contents", "POST", data=body)
        self.assertEqual(code, 400)
        self.assertIn(b"does not verify", answer)
        self.assertEqual(self.runner.calls, [])
