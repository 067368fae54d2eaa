"""A real MariaDB server driven through the HTTP API: service commands, facts, binlogs, relay logs.

One sandbox server (with log_bin) is shared by the whole class; the API runs on a real listening
Site with the real ProcessRunner, configured from a real JSON configuration file.
"""

import base64
import gzip
import io
import json
import os
import shlex
import shutil
import tempfile
import zlib
from urllib.parse import quote

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from orchagent.config import load_config
from orchagent.errors import AgentError
from orchagent.host.mysql import MySQL
from orchagent.host.relaylog import ReplicationLogs
from orchagent.process import ProcessRunner
from orchagent.threads import thread_runner
from tests.support.deferreds import inline
from tests.support.fake_runner import FakeRunner
from tests.support.mysql_fakes import mysql_routes
from tests.support.root import requires_root
from tests.support.routes import LiveClient
from tests.support.sandbox import SandboxPerClass


def unpack(text: str) -> bytes:
    return gzip.decompress(base64.b64decode(text))


@requires_root("the MariaDB sandbox runs its server as root")
class MariaDBThroughTheAPITests(SandboxPerClass, TestCase):
    """The MySQL routes on a real MariaDB: service commands, option files, binlogs and relay logs, safe replay."""

    sandbox_options = {"log_bin": True}

    def setUp(self):
        if not self.sandbox.is_running():
            self.sandbox.start()
        self.markers = os.path.abspath(self.mktemp())
        os.mkdir(self.markers)
        config_file = os.path.abspath(self.mktemp())
        with open(config_file, "w") as f:
            json.dump({**self.sandbox.config_values(),
                       "PostCopyCommand": f'touch {self.markers}/post-copy-"$ORCHAGENT_SOURCE_HOST"'}, f)
        config = load_config([config_file])
        self.runner = FakeRunner.around(ProcessRunner(reactor, default_timeout=60, kill_grace=1))
        self.mysql = MySQL(config, self.runner, reactor)
        self.client = LiveClient(self, mysql_routes(config, self.runner, reactor, self.mysql), reactor)

    async def call(self, path: str, method: str = "GET", data: bytes | None = None):
        return await self.client.request(path, method, data)

    async def ok(self, path: str, method: str = "GET", data: bytes | None = None):
        code, body = await self.call(path, method, data)
        self.assertEqual(code, 200, body)
        return body

    def new_binlog(self, statements: str) -> tuple[str, int]:
        """Rotate, run ``statements``; the new binlog's name and its end position."""
        self.sandbox.sql("FLUSH BINARY LOGS;" + statements)
        name, position = self.sandbox.sql("SHOW MASTER STATUS").split()[:2]
        return name, int(position)

    def events(self, name: str) -> list[tuple[int, str, int, str]]:
        """(position, type, end position, info) of each event, as the server reports them."""
        rows = self.sandbox.sql(f"SHOW BINLOG EVENTS IN '{name}'").splitlines()
        return [(int(pos), kind, int(end), info) for _, pos, kind, _, end, info in (r.split("\t") for r in rows)]

    @inline
    async def test_service_commands_status_and_port(self):
        self.assertIs(await self.ok("/api/mysql-status"), True)
        self.assertEqual(await self.ok("/api/mysql-port"), self.sandbox.port)
        self.assertIs(await self.ok("/api/mysql-stop"), True)
        self.assertFalse(self.sandbox.is_running())
        self.assertIs(await self.ok("/api/mysql-status"), False)
        self.assertIs(await self.ok("/api/mysql-start/"), True)
        self.assertTrue(self.sandbox.is_running())
        self.assertIs(await self.ok("/api/mysql-status"), True)
        self.assertEqual(self.sandbox.sql("SELECT 1"), "1\n")
        self.assertEqual([command[:2] for command in self.runner.commands], [
            ["configured", "MySQLServiceStatusCommand"], ["configured", "MySQLServiceStopCommand"],
            ["configured", "MySQLServiceStatusCommand"], ["configured", "MySQLServiceStartCommand"],
            ["configured", "MySQLServiceStatusCommand"]])

    @inline
    async def test_datadir_and_error_log_tail_from_the_option_file(self):
        self.assertEqual(await self.mysql.datadir(), self.sandbox.datadir)
        self.assertEqual(await self.mysql.error_log_path(), self.sandbox.error_log)
        lines = await self.ok("/api/mysql-error-log-tail")
        self.assertTrue(0 < len(lines) <= 20 and all(isinstance(line, str) for line in lines))
        with open(self.sandbox.error_log) as f:
            self.assertEqual(lines, f.read().splitlines()[-len(lines):])
        self.assertTrue(any("ready for connections" in line for line in lines), lines)

    @inline
    async def test_binlog_text_and_binary_contents(self):
        name, end = self.new_binlog("CREATE DATABASE IF NOT EXISTS b; CREATE TABLE b.t (i INT);"
                                    "INSERT INTO b.t VALUES (42);")
        text = unpack(await self.ok(f"/api/mysql-binlog-contents?binlog={name}"))
        self.assertIn(b"INSERT INTO b.t VALUES (42)", text)
        self.assertIn(b"# at 4", text)  # mysqlbinlog's annotation: this is its text output

        with open(os.path.join(self.sandbox.datadir, name), "rb") as f:
            raw = f.read()
        whole = unpack(await self.ok(f"/api/mysql-binlog-binary-contents?binlog={self.sandbox.datadir}/{name}"))
        self.assertEqual(whole, raw[:len(whole)])
        self.assertGreaterEqual(len(whole), end)

        events = self.events(name)
        header_end = events[0][2]  # the Format_desc event's end, from the server
        insert = next(i for i, event in enumerate(events) if "INSERT INTO b.t" in event[3])
        start, stop = events[insert - 1][0], events[insert][2]  # its Gtid event .. the INSERT itself
        part = unpack(await self.ok(f"/api/mysql-binlog-binary-contents?binlog={name}&start={start}&stop={stop}"))
        self.assertEqual(part, raw[:header_end] + raw[start:stop])

    @inline
    async def test_relay_logs_from_an_index_with_absolute_entries(self):
        names = [self.new_binlog("CREATE DATABASE IF NOT EXISTS r")[0] for _ in range(2)]
        relay_directory = os.path.join(self.directory, "relay")
        os.makedirs(relay_directory, exist_ok=True)
        relays = []
        for number, name in enumerate(names, 1):
            relays.append(os.path.join(relay_directory, f"relay-bin.00000{number}"))
            shutil.copy(os.path.join(self.sandbox.datadir, name), relays[-1])
        index = os.path.join(self.sandbox.datadir, "test-relay-bin.index")
        with open(index, "w") as f:
            f.write("".join(path + "\n" for path in relays))
        self.addCleanup(os.unlink, index)

        self.assertEqual(await self.ok("/api/mysql-relay-log-index-file"), index)
        self.assertEqual(await self.ok("/api/mysql-relay-log-files"), relays)
        self.assertEqual(await self.ok("/api/mysql-relay-log-end-coordinates"),
                         {"LogFile": relays[1], "LogPos": os.path.getsize(relays[1]), "Type": 1})

        contents = [open(path, "rb").read() for path in relays]
        headers = [self.events(name)[0][2] for name in names]
        start = headers[0] + 10
        tail = unpack(await self.ok(f"/api/mysql-relaylog-contents-tail/relay-bin.000001/{start}"))
        self.assertEqual(tail, contents[0][:headers[0]] + contents[0][start:] + contents[1][headers[1]:])

    @inline
    async def test_apply_relaylog_contents_replays_events(self):
        name, end = self.new_binlog("CREATE DATABASE applied; CREATE TABLE applied.t (i INT PRIMARY KEY);"
                                    "INSERT INTO applied.t VALUES (1), (2);")
        self.sandbox.sql("DROP DATABASE applied")
        encoded = await self.ok(f"/api/mysql-binlog-binary-contents?binlog={name}&stop={end}")
        before = set(os.listdir(tempfile.gettempdir()))
        self.assertEqual(await self.ok("/api/apply-relaylog-contents", "POST", encoded.encode()), "OK")
        self.assertEqual(self.sandbox.sql("SELECT i FROM applied.t ORDER BY i"), "1\n2\n")
        self.assertEqual(set(os.listdir(tempfile.gettempdir())) - before, set())
        self.sandbox.sql("DROP DATABASE applied")

    def crafted_binlog(self, database: str, payload: str, fix_checksum: bool = True) -> tuple[bytes, int]:
        """A real binlog whose INSERT holds ``payload`` after an empty string; the INSERT's offset.

        The payload replaces a long string literal and keeps the event's length; its CRC32 is
        recomputed when ``fix_checksum`` (as an attacker would), else left as the server wrote it.
        """
        literal = "'" + "A" * 400 + "'"
        name, end = self.new_binlog(f"CREATE DATABASE {database}; CREATE TABLE {database}.t (i INT, s TEXT);"
                                    f"INSERT INTO {database}.t VALUES (7, {literal})")
        self.sandbox.sql(f"DROP DATABASE {database}")
        with open(os.path.join(self.sandbox.datadir, name), "rb") as f:
            data = bytearray(f.read(end))
        at = data.index(literal.encode())
        data[at:at + len(literal)] = ("'' " + payload).encode().ljust(len(literal))
        offset = 4
        while not offset <= at < offset + int.from_bytes(data[offset + 9:offset + 13], "little"):
            offset += int.from_bytes(data[offset + 9:offset + 13], "little")
        if fix_checksum:
            size = int.from_bytes(data[offset + 9:offset + 13], "little")
            crc = zlib.crc32(data[offset:offset + size - 4])
            data[offset + size - 4:offset + size] = crc.to_bytes(4, "little")
        return bytes(data), offset

    @inline
    async def test_client_commands_hidden_in_events_are_not_run(self):
        """A Query event carrying a client command (checksum made valid) applies as SQL or fails; never runs it."""
        marker = os.path.join(self.markers, "pwned")
        for payload in (f"/*!99999\n\\! touch {marker}\n*/",  # anywhere in a line, even in a comment
                        f")/*!*/;\nsystem touch {marker}\n",  # a long-form command starts a statement
                        f")/*!*/;\nDELIMITER ;\nsystem touch {marker};\n"):
            data, _ = self.crafted_binlog("crafted", payload)
            code, body = await self.call("/api/apply-relaylog-contents", "POST",
                                         base64.encodebytes(gzip.compress(data)))
            self.assertFalse(os.path.exists(marker), payload)
            self.assertEqual(code, 502, payload)
            self.assertIn("Not allowed in the sandbox mode", body["Message"])
            self.sandbox.sql("DROP DATABASE IF EXISTS crafted")

    @inline
    async def test_a_log_flipped_after_its_checksum_is_refused_and_nothing_applied(self):
        data, offset = self.crafted_binlog("flipped", "/* B */", fix_checksum=False)
        before = len(self.runner.commands)
        encoded = base64.encodebytes(gzip.compress(data))
        code, body = await self.call("/api/apply-relaylog-contents", "POST", encoded)
        self.assertEqual((code, body["Message"]), (400, f"relay log event at offset {offset} does not verify "
                                                        "(its CRC32 checksum differs); nothing was applied"))
        self.assertEqual(self.sandbox.sql("SHOW DATABASES LIKE 'flipped'"), "")
        self.assertEqual(self.runner.commands[before:], [])

    @inline
    async def test_a_client_that_may_read_local_files_is_refused(self):
        """The real client without --local-infile=0 would let a statement read any file as root."""
        name, end = self.new_binlog("CREATE DATABASE IF NOT EXISTS loaded")
        encoded = (await self.ok(f"/api/mysql-binlog-binary-contents?binlog={name}&stop={end}")).encode()
        logs = ReplicationLogs(self.mysql, self.runner, in_thread=thread_runner(reactor),
                               client_command=shlex.join(self.sandbox.client_argv()), max_apply_bytes=1 << 20)
        self.sandbox.sql("DROP DATABASE loaded")
        before = len(self.runner.commands)
        with self.assertRaises(AgentError) as caught:
            await logs.apply_relaylog(io.BytesIO(encoded), len(encoded))
        self.assertIn("may read local files for LOAD DATA LOCAL INFILE: add --local-infile=0",
                      str(caught.exception))
        self.assertIn("Table 'mysql.orchagent_probe' doesn't exist", str(caught.exception))
        self.assertEqual([command[1] for command in self.runner.commands[before:]], ["MySQLClientCommand"] * 2)
        self.assertEqual(self.sandbox.sql("SHOW DATABASES LIKE 'loaded'"), "")

    @inline
    async def test_a_client_in_binary_mode_applies(self):
        """--binary-mode (recommended: it also stops connect) takes the sandbox line and passes the probes."""
        name, end = self.new_binlog("CREATE DATABASE binary_mode; CREATE TABLE binary_mode.t (b BLOB);"
                                    "INSERT INTO binary_mode.t VALUES (0x000d0a5c21);")
        encoded = (await self.ok(f"/api/mysql-binlog-binary-contents?binlog={name}&stop={end}")).encode()
        self.sandbox.sql("DROP DATABASE binary_mode")
        client = [*self.sandbox.client_argv(), "--binary-mode", "--local-infile=0"]
        logs = ReplicationLogs(self.mysql, self.runner, in_thread=thread_runner(reactor),
                               client_command=shlex.join(client), max_apply_bytes=1 << 20)
        await logs.apply_relaylog(io.BytesIO(encoded), len(encoded))
        self.assertEqual(self.sandbox.sql("SELECT HEX(b) FROM binary_mode.t"), "000D0A5C21\n")
        self.sandbox.sql("DROP DATABASE binary_mode")

    @inline
    async def test_a_log_without_checksums_applies(self):
        """binlog_checksum=NONE: the structure is checked, the events apply."""
        self.sandbox.sql("SET GLOBAL binlog_checksum=NONE")
        try:
            name, end = self.new_binlog("CREATE DATABASE plain; CREATE TABLE plain.t (i INT);"
                                        "INSERT INTO plain.t VALUES (3);")
        finally:
            self.sandbox.sql("SET GLOBAL binlog_checksum=CRC32")
        self.sandbox.sql("DROP DATABASE plain")
        encoded = await self.ok(f"/api/mysql-binlog-binary-contents?binlog={name}&stop={end}")
        self.assertEqual(await self.ok("/api/apply-relaylog-contents", "POST", encoded.encode()), "OK")
        self.assertEqual(self.sandbox.sql("SELECT i FROM plain.t"), "3\n")
        self.sandbox.sql("DROP DATABASE plain")

    @inline
    async def test_post_copy_passes_the_source_host_as_environment(self):
        self.assertIs(await self.ok("/api/post-copy/?sourceHost=db-2.example.com"), True)
        self.assertEqual(os.listdir(self.markers), ["post-copy-db-2.example.com"])

    @inline
    async def test_injection(self):
        """Every parameter, every hostile value: a 4xx with the error envelope, nothing run, no marker."""
        name = self.sandbox.sql("SHOW MASTER STATUS").split()[0]
        marker = os.path.join(self.markers, "M")
        hostile = [f";touch {marker}", f"|touch {marker}", f"$(touch {marker})", f"`touch {marker}`",
                   f"x\ntouch {marker}", "../../../../etc/passwd", "x\0y", "a" * 10240, "-1", "1.5", " 7"]
        paths = []
        for value in hostile:
            q = quote(value, safe="")
            paths += [f"/api/post-copy/?sourceHost={q}",
                      f"/api/mysql-binlog-contents?binlog={q}",
                      f"/api/mysql-binlog-binary-contents?binlog={q}",
                      f"/api/mysql-binlog-contents?binlog={name}&start={q}",
                      f"/api/mysql-binlog-binary-contents?binlog={name}&stop={q}",
                      f"/api/mysql-relaylog-contents-tail/{q}/4",
                      f"/api/mysql-relaylog-contents-tail/relay-bin.000001/{q}"]
        paths += ["/api/mysql-binlog-contents", "/api/mysql-binlog-binary-contents?start=4",
                  "/api/mysql-relaylog-contents-tail/relay-bin.000001"]
        for path in paths:
            code, body = await self.call(path)
            self.assertTrue(400 <= code < 500, (path[:80], code, body))
            self.assertEqual(body["Code"], "ERROR")
            self.assertTrue(body["Message"])
        for value in hostile[:5]:
            code, body = await self.call("/api/apply-relaylog-contents", "POST", value.encode())
            self.assertEqual(code, 400, body)
        self.assertEqual(self.runner.commands, [])
        self.assertEqual(os.listdir(self.markers), [])
