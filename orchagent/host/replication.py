"""Pointing the local server at a seed's source and starting replication (``SeedStartReplication``).

After a hot seed the new server's data stands exactly at the position the backup recorded.  This
module builds the SQL that makes it replicate from there, runs it through ``MySQLClientCommand``
(the admin's client for the local server, as the relay-log apply does, in the client's sandbox
mode), then reads ``SHOW SLAVE STATUS`` until both threads run or an error shows, and reports
what it configured and, when replication did not start, why.

Every value is validated (host grammar of :mod:`orchagent.web.validate`, port, user name,
coordinates of :mod:`orchagent.host.hotbackup`) and every string is quoted by
:func:`sql_string`; the password (any character) is read from ``SeedReplicationPasswordFile``, is
written only into a 0600 file in a 0700 directory that the client reads on stdin, and is redacted
from every message.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import Callable

import attrs
from twisted.internet.task import deferLater

from orchagent import logs, safepath
from orchagent.errors import AgentError, Conflict, InvalidInput, redact
from orchagent.host.hotbackup import BinlogPosition
from orchagent.commands import CommandFailed
from orchagent.host.relaylog import SANDBOX_LINE
from orchagent.web import validate

log = logs.logger(__name__)

MAX_PASSWORD_BYTES = 1024
STATUS_POLL_SECONDS = 0.5
STATUS_WAIT_SECONDS = 15.0  # how long both threads get to show they run, or an error
_USER = re.compile(r"[A-Za-z0-9_.-]{1,80}")

#: SQL string escapes for the server's default sql_mode (the SQL sets it, so NO_BACKSLASH_ESCAPES cannot apply).
_ESCAPES = {"\\": "\\\\", "'": "\\'", '"': '\\"', "\0": "\\0", "\n": "\\n", "\r": "\\r", "\x1a": "\\Z"}


def sql_string(value: str) -> str:
    """A quoted SQL string literal holding exactly ``value`` (as mysql_real_escape_string)."""
    return "'" + "".join(_ESCAPES.get(char, char) for char in value) + "'"


@attrs.frozen
class ReplicationSource:
    """Who to replicate from, each value checked on construction (InvalidInput otherwise)."""

    host: str
    port: int
    user: str

    def __attrs_post_init__(self):
        validate.host(self.host, "the seed's source host")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise InvalidInput(f"the seed's source MySQL port must be from 1 to 65535, got {self.port!r}")
        if not _USER.fullmatch(self.user):
            raise InvalidInput(f"SeedReplicationUser must be 1 to 80 letters, digits and _ . -, got {self.user[:80]!r}")


def replication_sql(source: ReplicationSource, password: str, position: BinlogPosition) -> str:
    """The statements that make the local server replicate from ``source`` at ``position``.

    MariaDB with a GTID: ``gtid_slave_pos`` and ``MASTER_USE_GTID=slave_pos``; MySQL with GTIDs:
    ``gtid_purged`` and ``MASTER_AUTO_POSITION=1``; otherwise the binlog file and position.
    """
    connect = (f"MASTER_HOST={sql_string(source.host)}, MASTER_PORT={source.port}, "
               f"MASTER_USER={sql_string(source.user)}, MASTER_PASSWORD={sql_string(password)}")
    statements = ["SET SESSION sql_mode=''", "STOP SLAVE"]
    if position.flavor == "mariadb":
        statements += [f"SET GLOBAL gtid_slave_pos={sql_string(position.gtid)}",
                       f"CHANGE MASTER TO {connect}, MASTER_USE_GTID=slave_pos"]
    elif position.flavor == "mysql":
        statements += ["RESET MASTER", f"SET GLOBAL gtid_purged={sql_string(position.gtid)}",
                       f"CHANGE MASTER TO {connect}, MASTER_AUTO_POSITION=1"]
    else:
        statements += [f"CHANGE MASTER TO {connect}, MASTER_LOG_FILE={sql_string(position.file)}, "
                       f"MASTER_LOG_POS={position.position}"]
    statements.append("START SLAVE")
    return SANDBOX_LINE.decode() + "".join(f"{statement};\n" for statement in statements)


def describe(source: ReplicationSource, position: BinlogPosition) -> str:
    """What was configured, for seed-status and the log (no password)."""
    where = {"mariadb": f"GTID {position.gtid} (gtid_slave_pos, MASTER_USE_GTID=slave_pos)",
             "mysql": f"GTID set {position.gtid} (gtid_purged, MASTER_AUTO_POSITION=1)"}.get(
        position.flavor, f"{position.file}:{position.position}")
    return f"replicating from {source.user}@{source.host}:{source.port} at {where}"


def parse_vertical(text: str) -> dict[str, str]:
    """The first row of the client's vertical output (``\\G``): ``Name: value`` lines."""
    row: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        if line.startswith("*****"):
            if row:
                break
            continue
        match = re.match(r"^\s*([A-Za-z_]+): ?(.*)$", line)
        if match:
            name = match.group(1)
            row[name] = match.group(2)
        elif name is not None:
            row[name] += "\n" + line  # a value that runs over lines (an error message)
    return row


@attrs.frozen
class ReplicationReport:
    configured: str  # what was set up
    running: bool  # both threads run
    problem: str = ""  # why not, in the server's words

    def __str__(self) -> str:
        return self.configured + ("" if self.running else f"; replication did not start: {self.problem}")


def status_problem(status: dict[str, str]) -> str | None:
    """None while the threads are still starting; "" once both run; otherwise why they do not."""
    if not status:
        return "SHOW SLAVE STATUS shows no replication configured"
    io, sql = status.get("Slave_IO_Running", ""), status.get("Slave_SQL_Running", "")
    errors = [f"{thread} error {status.get(f'Last_{thread}_Errno', '')}: {status[f'Last_{thread}_Error'].strip()}"
              for thread in ("IO", "SQL") if status.get(f"Last_{thread}_Error", "").strip()]
    if errors:
        return "; ".join(errors) + f" (Slave_IO_Running {io}, Slave_SQL_Running {sql})"
    if io == "Yes" and sql == "Yes":
        return ""
    if io == "No" or sql == "No":
        return f"Slave_IO_Running {io}, Slave_SQL_Running {sql}"
    return None


class ReplicationSetup:
    """Runs the set-up on the local server through ``MySQLClientCommand``."""

    def __init__(self, config, runner, clock, defer_to_thread: Callable, *, wait_seconds: float = STATUS_WAIT_SECONDS):
        self._config = config
        self._runner = runner
        self._clock = clock
        self._defer_to_thread = defer_to_thread
        self._wait_seconds = wait_seconds

    async def configure(self, source_host: str, source_port: int | None, position: BinlogPosition | None) -> str:
        """:meth:`start` for a seed: what was configured, or why nothing was.  Never raises."""
        if position is None:
            return ("replication not configured: this seed carried no binlog coordinates (a snapshot or file "
                    "copy, not a hot backup); configure it by hand")
        if not source_host:
            return ("replication not configured: the source host is unknown (orchestrator's "
                    "post-copy/?sourceHost= did not name it)")
        try:
            return str(await self.start(source_host, source_port, position))
        except Exception as e:
            return f"replication not configured: {e}"

    async def start(self, source_host: str, source_port: int, position: BinlogPosition) -> ReplicationReport:
        """Configure and start replication; the report says whether it runs (raises only when nothing could run)."""
        config = self._config
        if not config.mysql_client_command:
            raise AgentError("MySQLClientCommand is empty; set it to the client command that reaches the local server")
        source = ReplicationSource(source_host, source_port, config.seed_replication_user)
        password = await self._defer_to_thread(read_password, config.seed_replication_password_file)
        configured = describe(source, position)
        directory = await self._defer_to_thread(tempfile.mkdtemp, "", "orchagent-replication-")
        try:
            statements = os.path.join(directory, "setup.sql")
            await self._defer_to_thread(_write_private, statements, replication_sql(source, password, position))
            try:
                await self._client(statements)
            except CommandFailed as e:
                problem = redact(str(e), (password,))
                log.warn("replication set-up failed: {configured}: {problem}", configured=configured, problem=problem)
                return ReplicationReport(configured, False, problem)
            query = os.path.join(directory, "status.sql")
            await self._defer_to_thread(_write_private, query, SANDBOX_LINE.decode() + "SHOW SLAVE STATUS\\G\n")
            problem = await self._wait_for_threads(query, password)
        finally:
            await self._defer_to_thread(shutil.rmtree, directory, True)
        report = ReplicationReport(configured, problem == "", problem or "")
        (log.info if report.running else log.warn)("replication set-up: {report}", report=str(report))
        return report

    async def _wait_for_threads(self, query: str, password: str) -> str:
        deadline = self._clock.seconds() + self._wait_seconds
        while True:
            result = await self._client(query)
            problem = status_problem(parse_vertical(result.text()))
            if problem is not None:
                return redact(problem, (password,))
            if self._clock.seconds() >= deadline:
                return "the replication threads did not report running within " \
                       f"{self._wait_seconds:g} s (Slave_IO_State still connecting?)"
            await deferLater(self._clock, STATUS_POLL_SECONDS, lambda: None)

    def _client(self, sql_file: str):
        return self._runner.run_configured(self._config.mysql_client_command, name="MySQLClientCommand",
                                           stdin_path=sql_file)


def read_password(path: str) -> str:
    """The replication password: the file's content without its trailing newline.  Blocking."""
    fd = safepath.open_private_file(path, what="SeedReplicationPasswordFile")
    try:
        content = os.read(fd, MAX_PASSWORD_BYTES + 1)
    finally:
        os.close(fd)
    if len(content) > MAX_PASSWORD_BYTES:
        raise Conflict(f"SeedReplicationPasswordFile {path!r} holds more than {MAX_PASSWORD_BYTES} bytes; "
                       "it must hold the password only")
    try:
        password = content.decode("utf-8").removesuffix("\n")
    except UnicodeDecodeError:
        raise Conflict(f"SeedReplicationPasswordFile {path!r} is not UTF-8 text") from None
    if not password or "\0" in password:
        raise Conflict(f"SeedReplicationPasswordFile {path!r} must hold the replication user's password "
                       "(no NUL byte), on one line")
    return password


def _write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
