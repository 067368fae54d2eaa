"""The local MySQL/MariaDB server: where it keeps its data, its port, its error log, its service.

Each fact comes from the administrator's configured command when one is set (V1's keys), and
otherwise from the server's own option files, read as the server reads them
(:mod:`orchagent.host.optionfiles`).  Service control only ever runs the configured commands.
"""

from __future__ import annotations

import os
import re
import socket
from typing import Callable, Sequence


from orchagent import logs
from orchagent.cache import ShortCache
from orchagent.config import Config
from orchagent.errors import AgentError, Busy
from orchagent.host import errorlog
from orchagent.host.optionfiles import DEFAULT_OPTION_FILES, OptionFileError, read_server_options
from orchagent.threads import thread_runner

log = logs.logger(__name__)

#: Where Debian's and upstream's packages compile the datadir in when my.cnf does not say.
COMPILED_DATADIR = "/var/lib/mysql"
DEFAULT_PORT = 3306
FACTS_FRESH_SECONDS = 5.0  # datadir and port: re-read after this...
FACTS_STALE_SECONDS = 60.0  # ...answering the old value meanwhile, up to this age


class MySQL:
    def __init__(
        self,
        config: Config,
        runner,
        reactor,
        *,
        hostname: Callable[[], str] = socket.gethostname,
        default_option_files: Sequence[str] = DEFAULT_OPTION_FILES,
        compiled_datadir: str = COMPILED_DATADIR,
    ):
        self._config = config
        self._runner = runner
        self._in_thread = thread_runner(reactor)
        # Orchestrator asks for these on every poll; each lookup may run a configured command.
        self._facts = ShortCache(reactor, FACTS_FRESH_SECONDS, FACTS_STALE_SECONDS)
        self._status = ShortCache(reactor, 0)
        self._hostname = hostname
        self._option_files = (config.mysql_config_file,) if config.mysql_config_file else tuple(default_option_files)
        self._option_files_must_exist = bool(config.mysql_config_file)
        self._compiled_datadir = compiled_datadir

    def in_thread(self, function, *args):
        """Run blocking file work off the reactor thread; a Deferred of its result."""
        return self._in_thread(function, *args)

    async def server_options(self) -> dict[str, str | None]:
        """The server's options from its option files (normalised names, last value wins)."""
        try:
            return await self.in_thread(lambda: read_server_options(
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
        if await self.in_thread(os.path.isdir, self._compiled_datadir):
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
        return await self.in_thread(errorlog.tail_lines, path, lines)

    async def is_running(self) -> bool:
        """``MySQLServiceStatusCommand`` exits 0.  Any failure means "not running", except Busy.

        Never cached (guards need the truth now), but concurrent callers share one check.
        """
        return await self._status.get("running", self._check_running)

    async def _check_running(self) -> bool:
        command = self._config.mysql_service_status_command
        if not command:
            log.debug("MySQLServiceStatusCommand is not set; reporting MySQL as not running")
            return False
        try:
            result = await self._runner.run_configured(command, name="MySQLServiceStatusCommand",
                                                      essential=True, check=False)
        except Busy:
            raise  # a check refused for want of a slot must not let a guard read "not running"
        except Exception as e:
            log.warn("MySQLServiceStatusCommand could not run: {error}", error=e)
            return False
        return result.ok

    async def start(self) -> None:
        self._facts.invalidate()
        await self._run_service_command("mysql_service_start_command", "MySQLServiceStartCommand")

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


def _port(value: str, origin: str) -> int:
    if re.fullmatch(r"[0-9]{1,5}", value) and 1 <= int(value) <= 65535:
        return int(value)
    raise AgentError(f"{origin} {value!r}, which is not a port number (1-65535)")
