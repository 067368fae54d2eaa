"""The local MySQL/MariaDB server: where it keeps its data, its port, its error log, its service.

Each fact comes from the administrator's configured command when one is set (V1's keys), and
otherwise from the server's own option files, read as the server reads them
(:mod:`orchagent.host.optionfiles`).  Service control only ever runs the configured commands.
Whether the server runs is decided by :mod:`orchagent.host.liveness`: unknown counts as running.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from typing import Awaitable, Callable, Sequence


from orchagent import logs
from orchagent.cache import ShortCache
from orchagent.commands import CommandFailed
from orchagent.config import Config
from orchagent.errors import AgentError, Conflict
from orchagent.host import errorlog
from orchagent.host.liveness import (
    RUNNING, STOPPED, UNKNOWN, Findings, Liveness, ServerPlaces, Verdict, command_verdict, decide, probe)
from orchagent.host.optionfiles import DEFAULT_OPTION_FILES, OptionFileError, read_server_options
from orchagent.interfaces import ProcessRunner, ThreadRunner
from orchagent.threads import thread_runner

log = logs.logger(__name__)

#: Where Debian's and upstream's packages compile the datadir in when my.cnf does not say.
COMPILED_DATADIR = "/var/lib/mysql"
DEFAULT_PORT = 3306
DEFAULT_SOCKET = "/run/mysqld/mysqld.sock"  # Debian's compiled-in socket
FACTS_FRESH_SECONDS = 5.0  # datadir and port: re-read after this...
FACTS_STALE_SECONDS = 60.0  # ...answering the old value meanwhile, up to this age


class MySQL:
    def __init__(
        self,
        config: Config,
        runner: ProcessRunner,
        reactor,  # its time for the caches, and its thread pool unless in_thread is given
        *,
        in_thread: ThreadRunner | None = None,
        hostname: Callable[[], str] = socket.gethostname,
        default_option_files: Sequence[str] = DEFAULT_OPTION_FILES,
        compiled_datadir: str = COMPILED_DATADIR,
        probe_host: Callable[[ServerPlaces], Findings] = probe,
    ):
        self._config = config
        self._runner = runner
        self._in_thread = in_thread or thread_runner(reactor)  # blocking file work
        # Orchestrator asks for these on every poll; each lookup may run a configured command.
        self._facts = ShortCache(reactor, FACTS_FRESH_SECONDS, FACTS_STALE_SECONDS)
        self._status = ShortCache(reactor, 0)
        self._hostname = hostname
        self._option_files = (config.mysql_config_file,) if config.mysql_config_file else tuple(default_option_files)
        self._option_files_must_exist = bool(config.mysql_config_file)
        self._compiled_datadir = compiled_datadir
        self._probe = probe_host
        self._after_start: list[Callable[[], Awaitable[None]]] = []

    async def server_options(self) -> dict[str, str | None]:
        """The server's options from its option files (normalised names, last value wins)."""
        try:
            return await self._in_thread(lambda: read_server_options(
                self._option_files, must_exist=self._option_files_must_exist))
        except OptionFileError as e:
            raise AgentError(f"cannot read the MySQL option files: {e}") from None

    async def datadir(self) -> str:
        """Absolute, normalised, without a trailing slash."""
        return await self._facts.get("datadir", self._look_up_datadir)

    async def _look_up_datadir(self) -> str:
        command = self._config.mysql_datadir_command
        if command:
            result = await self._runner.run_configured(command, name="MySQLDatadirCommand", essential=True)
            return _absolute_path(result.text().strip(), "the output of MySQLDatadirCommand")
        options = await self.server_options()
        value = options.get("datadir")
        if value:
            return _absolute_path(value, f"datadir in {self._files_text()}")
        if await self._in_thread(os.path.isdir, self._compiled_datadir):
            return _absolute_path(self._compiled_datadir, "the compiled-in datadir")
        raise AgentError(f"cannot tell where MySQL keeps its data: no datadir in {self._files_text()} "
                         f"and no {self._compiled_datadir}; set MySQLDatadirCommand or MySQLConfigFile")

    async def port(self) -> int:
        return await self._facts.get("port", self._look_up_port)

    async def _look_up_port(self) -> int:
        command = self._config.mysql_port_command
        if command:
            result = await self._runner.run_configured(command, name="MySQLPortCommand", essential=True)
            return _port(result.text().strip(), "MySQLPortCommand printed")
        value = (await self.server_options()).get("port")
        return _port(value, f"port in {self._files_text()} is") if value else DEFAULT_PORT

    async def error_log_path(self) -> str:
        """``MySQLErrorLogFile``, else ``log_error`` (relative to the datadir), else the default."""
        if self._config.mysql_error_log_file:
            return self._config.mysql_error_log_file
        options = await self.server_options()
        name = options.get("log_error") or ""
        if name == "stderr":
            raise AgentError("the server writes its error log to stderr (log_error=stderr); "
                             "set MySQLErrorLogFile to the file stderr goes to")
        if not name:
            # mysqld's default: <log_basename, or the hostname up to its first dot>.err
            name = (options.get("log_basename") or self._hostname().split(".")[0]) + ".err"
        elif "." not in os.path.basename(name):
            name += ".err"  # the server adds .err to a name without an extension
        if not os.path.isabs(name):
            name = os.path.join(await self.datadir(), name)
        return _absolute_path(name, "log_error")

    async def error_log_tail(self, lines: int) -> list[str]:
        path = await self.error_log_path()
        return await self._in_thread(errorlog.tail_lines, path, lines)

    async def liveness(self) -> Liveness:
        """Whether a server uses the datadir, by :func:`orchagent.host.liveness.decide`.  Never raises.

        Never cached (guards need the truth now), but concurrent callers share one check.
        """
        return await self._status.get("liveness", self._check_liveness)

    async def is_running(self) -> bool:
        """``mysql-status``: True unless it is shown that no server uses the datadir."""
        return (await self.liveness()).may_be_running

    async def require_stopped(self, action: str) -> None:
        """Conflict, saying what was found and what to configure, unless no server uses the datadir."""
        found = await self.liveness()
        if found.state == RUNNING:
            raise Conflict(f"refusing to {action}: MySQL is running ({found.explain()}); "
                           f"stop it first (mysql-stop)")
        if found.state != STOPPED:
            raise Conflict(f"refusing to {action}: cannot tell whether MySQL is running "
                           f"({found.explain()}); set MySQLServiceStatusCommand to a command that exits 0 "
                           f"while MySQL runs and non-zero once it has stopped (and MySQLConfigFile when "
                           f"the server does not read {' or '.join(DEFAULT_OPTION_FILES)})")

    async def _check_liveness(self) -> Liveness:
        verdict = None
        try:
            verdict = await self._status_verdict()
            findings = Findings() if verdict is not None and verdict.state == RUNNING else await self._probe_host()
            found = decide(verdict, findings)
        except Exception as e:  # a bug here must not read as "stopped"
            log.failure("checking whether MySQL runs failed")
            found = Liveness(UNKNOWN, (f"the check failed: {e}",))
        # Warn when the agent cannot tell, or when the status command contradicts the host.
        contradicted = verdict is not None and verdict.state != found.state
        emit = log.warn if found.state == UNKNOWN or contradicted else log.debug
        emit("MySQL is {state}: {evidence}", state=found.state, evidence=found.explain())
        return found

    async def _status_verdict(self) -> Verdict | None:
        command = self._config.mysql_service_status_command
        if not command:
            return None
        try:
            result = await self._runner.run_configured(command, name="MySQLServiceStatusCommand",
                                                      essential=True, check=False)
        except CommandFailed as e:  # timed out, or outlived SIGKILL
            result = e.result
        except Exception as e:
            return Verdict(UNKNOWN, f"MySQLServiceStatusCommand could not run: {e}")
        return command_verdict(result)

    async def _probe_host(self) -> Findings:
        try:
            places = await self._server_places()
        except AgentError as e:
            return Findings(unchecked=(f"cannot tell where a server would show itself: {e}",))
        return await self._in_thread(self._probe, places)

    async def _server_places(self) -> ServerPlaces:
        """The datadir, pid file, socket, port and listening addresses, as the server would use them."""
        datadir = await self.datadir()
        options = await self.server_options()
        port = await self.port()
        # mysqld's default pid file: <log_basename, or the hostname up to its first dot>.pid
        pid_file = options.get("pid_file") or (options.get("log_basename") or self._hostname().split(".")[0]) + ".pid"
        socket_path = options.get("socket") or DEFAULT_SOCKET
        return ServerPlaces(datadir=datadir, pid_file=os.path.join(datadir, pid_file),
                            socket=os.path.join(datadir, socket_path), port=port,
                            addresses=_connect_addresses(options.get("bind_address")))

    def after_start(self, step: Callable[[], Awaitable[None]]) -> None:
        """Run ``step`` after each successful ``start`` (the seed manager's replication set-up)."""
        self._after_start.append(step)

    async def start(self) -> None:
        self._facts.invalidate()
        await self._run_service_command("mysql_service_start_command", "MySQLServiceStartCommand")
        for step in self._after_start:
            try:
                await step()
            except Exception:  # the server did start: a failed step must not fail mysql-start
                log.failure("a step after starting MySQL failed")

    async def stop(self) -> None:
        self._facts.invalidate()
        await self._run_service_command("mysql_service_stop_command", "MySQLServiceStopCommand")

    async def post_copy(self, source_host: str | None) -> None:
        """``PostCopyCommand``; the seed's source host arrives as ``$ORCHAGENT_SOURCE_HOST``.

        ``source_host`` must already be validated; it is passed in the environment only, never
        as command text or arguments.
        """
        self._facts.invalidate()
        command = self._config.post_copy_command
        if not command:
            log.info("PostCopyCommand is not set; nothing to do after the copy")
            return
        env = {"ORCHAGENT_SOURCE_HOST": source_host} if source_host else None
        await self._runner.run_configured(command, name="PostCopyCommand", env=env)

    async def _run_service_command(self, field: str, key: str) -> None:
        command = getattr(self._config, field)
        if not command:
            raise AgentError(f"{key} is not set in the agent's configuration")
        await self._runner.run_configured(command, name=key)

    def _files_text(self) -> str:
        return " or ".join(self._option_files)


def _absolute_path(value: str, origin: str) -> str:
    if not value or "\n" in value or "\0" in value:
        raise AgentError(f"{origin} is not a path: {value!r}")
    if not os.path.isabs(value):
        raise AgentError(f"{origin} must be an absolute path, got {value!r}")
    return "/" + os.path.normpath(value).lstrip("/")  # normpath keeps a leading "//"


def _connect_addresses(bind_address: str | None) -> tuple[str, ...]:
    """Where to try the port: each IP address of ``bind-address``; loopback for a wildcard or a name."""
    addresses = []
    for value in (bind_address or "").split(","):
        value = value.strip()
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            continue  # empty, "*" or a host name
        if not address.is_unspecified:
            addresses.append(str(address))
    return tuple(addresses) or ("127.0.0.1",)


def _port(value: str, origin: str) -> int:
    if re.fullmatch(r"[0-9]{1,5}", value) and 1 <= int(value) <= 65535:
        return int(value)
    raise AgentError(f"{origin} {value!r}, which is not a port number (1-65535)")
