"""Hot backups with mariabackup or Percona XtraBackup: ``SnapshotBackend: "hotbackup"``.

Orchestrator seeds only from a mounted snapshot (contract B.2.2).  This backend lists one virtual
volume, "a consistent copy of the live server, taken on demand"; ``mountlv`` of it checks that a
backup can run (the tool answers, the credentials of ``HotBackupDefaultsFile`` reach the server,
the binary log is on when ``SeedStartReplication`` wants coordinates) and then reads as mounted,
with the live datadir and its size, which orchestrator uses for its free-space check.  The copy
itself is taken when the seed is sent, by the backup tool streaming into the seed transfer.

The command lines and the parsers of the tools' output are pure functions (tested on recorded
output, ``tests/fixtures/hotbackup``).  Credentials reach the tools only as
``--defaults-extra-file=<HotBackupDefaultsFile>``, always the first option (the tools read it
only there), never in argv or the JSON configuration.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import Callable

import attrs

from orchagent import logs, safepath
from orchagent.config import HOT_BACKUP_VOLUME
from orchagent.errors import AgentError, Conflict, InvalidInput
from orchagent.host.btrfs import same_directory
from orchagent.host.lvm import LogicalVolume
from orchagent.host.mounts import MountEntry
from orchagent.commands import CommandFailed
from orchagent.process import stream_pipe
from orchagent.web import validate

log = logs.logger(__name__)

#: Where the volume's Path starts: ``/hotbackup/var/lib/mysql`` shows in orchestrator's UI what it copies.
VOLUME_ROOT = "/hotbackup"


@attrs.frozen
class Tool:
    """One backup tool and its companions."""

    name: str  # HotBackupTool
    stream_format: str  # --stream=
    extractor: str  # the program that unpacks the stream
    client: str  # the SQL client of the same family


TOOLS = {
    "mariabackup": Tool("mariabackup", "mbstream", "mbstream", "mariadb"),
    "xtrabackup": Tool("xtrabackup", "xbstream", "xbstream", "mysql"),
}

#: The files holding the backup's binlog coordinates, newest name first (MariaDB 11 renamed it).
BINLOG_INFO_FILES = ("mariadb_backup_binlog_info", "xtrabackup_binlog_info")

#: What the source check asks the server (fixed SQL: nothing from a request).
SERVER_CHECK_SQL = "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('log_bin', 'gtid_mode', 'version', 'datadir')"


# --- command lines -----------------------------------------------------------------------------


def version_argv(tool: Tool) -> list[str]:
    return [tool.name, "--version"]


def server_check_argv(tool: Tool, defaults_file: str) -> list[str]:
    """The client, connecting as the backup user, reads the variables that decide whether a backup can run."""
    return [tool.client, f"--defaults-extra-file={defaults_file}", "--batch", "--skip-column-names",
            "-e", SERVER_CHECK_SQL]


def backup_argv(tool: Tool, defaults_file: str, temp_dir: str, datadir: str) -> list[str]:
    """The backup, streamed to stdout; ``temp_dir`` holds its few temporary files (redo log copy)."""
    return [tool.name, f"--defaults-extra-file={defaults_file}", "--backup", f"--stream={tool.stream_format}",
            f"--target-dir={temp_dir}", f"--datadir={datadir}"]


def extract_argv(tool: Tool, directory: str) -> list[str]:
    """Unpacks the stream read on stdin into ``directory`` as it arrives."""
    return [tool.extractor, "-x", "-C", directory]


def prepare_argv(tool: Tool, directory: str, memory_mb: int) -> list[str]:
    """Applies the copied redo log, so the files are those of a cleanly stopped server."""
    return [tool.name, "--prepare", f"--use-memory={memory_mb}M", f"--target-dir={directory}"]


# --- parsing the tools' output -------------------------------------------------------------------


@attrs.frozen
class ToolVersion:
    tool: str
    version: str  # the tool's own version ("10.11.19" for mariabackup, which shares the server's)
    server: str  # the server it was built from, e.g. "MariaDB server 10.11.19-MariaDB"


_MARIABACKUP_VERSION = re.compile(r"^(mariabackup|mariadb-backup) based on (MariaDB server (\d+\.\d+\.\d+)\S*)",
                                  re.MULTILINE)
_XTRABACKUP_VERSION = re.compile(r"^xtrabackup version (\d+\.\d+\.\d+\S*) based on (MySQL server \d+\.\d+\.\d+\S*)",
                                 re.MULTILINE)


def parse_version(tool: Tool, text: str) -> ToolVersion:
    """``<tool> --version`` (either stream: mariabackup writes it to stderr)."""
    if tool.name == "mariabackup":
        match = _MARIABACKUP_VERSION.search(text)
        if match:
            return ToolVersion(tool.name, match.group(3), match.group(2))
    else:
        match = _XTRABACKUP_VERSION.search(text)
        if match:
            return ToolVersion(tool.name, match.group(1), match.group(2))
    raise AgentError(f"{tool.name} --version printed no version line ({_last_line(text)!r}); check HotBackupTool")


@attrs.frozen
class BinlogPosition:
    """Where the backup stands in the source's binary log."""

    file: str
    position: int
    gtid: str  # "" when the server has none; MariaDB "0-1-3,1-2-9"; MySQL "uuid:1-5,uuid:1-3"

    @property
    def flavor(self) -> str:
        """"mariadb" or "mysql", from the GTID's shape; "" without a GTID."""
        if not self.gtid:
            return ""
        return "mariadb" if _MARIADB_GTIDS.fullmatch(self.gtid) else "mysql"


_LOG_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,254}")
_MARIADB_GTIDS = re.compile(r"\d{1,10}-\d{1,10}-\d{1,20}(,\d{1,10}-\d{1,10}-\d{1,20})*")
_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_INTERVALS = r"\d{1,20}(-\d{1,20})?(:\d{1,20}(-\d{1,20})?)*"
_TAG = r"[A-Za-z_][A-Za-z0-9_]{0,31}"  # MySQL 8.4 tagged GTIDs: uuid:tag:1-5
_MYSQL_MEMBER = rf"{_UUID}(:({_TAG}:)?{_INTERVALS})+"
_MYSQL_GTIDS = re.compile(rf"{_MYSQL_MEMBER}(,{_MYSQL_MEMBER})*")


def parse_binlog_info(text: str) -> BinlogPosition:
    """``xtrabackup_binlog_info`` (or ``mariadb_backup_binlog_info``): file, position, GTIDs.

    Tab-separated; MySQL's GTID set runs on over more lines (``uuid:1-5,\\nuuid:1-3``), so every
    line after the first belongs to it.  Whatever does not fit the grammar is refused: these
    values end up in SQL on the replica.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    fields = lines[0].split("\t") if lines else []
    if len(fields) < 2:
        fields = lines[0].split() if lines else []
    if len(fields) < 2:
        raise AgentError(f"the backup's binlog info {_last_line(text)!r} has no file and position: was the "
                         "binary log on (log_bin) on the source?")
    log_file, position, gtid_head = fields[0].strip(), fields[1].strip(), fields[2:]
    gtid = "".join(part.strip() for part in [*gtid_head, *lines[1:]])
    gtid = re.sub(r"\s+", "", gtid)
    if not _LOG_FILE.fullmatch(log_file) or not position.isdigit() or len(position) > 20:
        raise AgentError(f"the backup's binlog info names an unusable file or position: {lines[0][:200]!r}")
    if gtid and not (_MARIADB_GTIDS.fullmatch(gtid) or _MYSQL_GTIDS.fullmatch(gtid)):
        raise AgentError(f"the backup's binlog info holds an unusable GTID set: {gtid[:200]!r}")
    return BinlogPosition(log_file, int(position), gtid)


def parse_variables(text: str) -> dict[str, str]:
    """Tab-separated ``name value`` rows (the client's ``--batch --skip-column-names``), names lower case."""
    variables = {}
    for line in text.splitlines():
        name, tab, value = line.partition("\t")
        if tab:
            variables[name.strip().lower()] = value.strip()
    return variables


#: "[00] 2026-11-29 07:07:42 " (mariabackup), "2025-07-28T01:01:33.001122+03:00 0 " (xtrabackup 8.0)
_TIMESTAMP_PREFIX = re.compile(
    r"^(\[\d+\]\s+)?(\d{4}-\d{2}-\d{2}[T ]\s*\d{1,2}:\d{2}:\d{2}(\.\d+)?([+-]\d{2}:\d{2}|Z)?\s+)?(\d+\s+)?")
_ERROR_MARK = re.compile(r"\[ERROR\]")
_NOISE = re.compile(r"my_thread_global_end|files and \d+ streams is left open")
_ERROR_WORDS = re.compile(r"error|fail|denied|cannot|can't|unknown|not found|refused|invalid", re.IGNORECASE)


def tool_error(text: str) -> str:
    """The line of a tool's stderr that says what went wrong, without its thread and time prefix.

    mariabackup and xtrabackup log progress to stderr too, and their last lines are often noise
    ("Error in my_thread_global_end()"): the last ``[ERROR]`` line is the cause, else the last line
    naming an error, else the last line.
    """
    lines = [_TIMESTAMP_PREFIX.sub("", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not _NOISE.search(line)]
    for wanted in (_ERROR_MARK, _ERROR_WORDS):
        for line in reversed(lines):
            if wanted.search(line):
                return line
    return lines[-1] if lines else ""


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


MAX_BINLOG_INFO_BYTES = 1 << 16


def read_binlog_info(directory: str | int) -> BinlogPosition | None:
    """The coordinates of an extracted backup in ``directory`` (a path, opened without following a link,
    or a directory descriptor); None when it has no binlog info (log_bin off on the source).  Blocking."""
    if isinstance(directory, int):
        dir_fd = os.dup(directory)
    else:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for name in BINLOG_INFO_FILES:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
            except FileNotFoundError:
                continue
            with os.fdopen(fd, "rb") as f:
                return parse_binlog_info(f.read(MAX_BINLOG_INFO_BYTES).decode("utf-8", "replace"))
        return None
    finally:
        os.close(dir_fd)


async def prepare_copy(runner, tool: Tool, directory: str, memory_mb: int, defer_to_thread: Callable,
                       *, timeout: float | None, directory_fd: int | None = None) -> BinlogPosition | None:
    """Prepare an extracted backup (a damaged copy fails here, with the tool's own words, never later
    at the server's start) and read where it stands in the source's binary log (through
    ``directory_fd`` when given: ``directory`` may be a descriptor's ``/proc`` link)."""
    try:
        await runner.run(prepare_argv(tool, directory, memory_mb), timeout=timeout)
    except CommandFailed as e:
        said = tool_error(e.result.stderr.decode("utf-8", "replace")) or str(e)
        raise AgentError(f"{tool.name} --prepare failed: {said}") from None
    return await defer_to_thread(read_binlog_info, directory if directory_fd is None else directory_fd)


class ToolStream:
    """One streaming run of a tool: the backup writing its stream, or the extractor reading one.

    ``fd`` is the caller's end of the pipe (read the stream from it, or write the stream into it),
    for a worker thread: the pipe is the backpressure.  :meth:`finished` waits for the tool's end
    and turns a failure into the tool's own words; :meth:`abort` kills its process group.  Both
    remove the backup's temporary directory.
    """

    def __init__(self, what: str, command, fd: int, temp_dir: str | None, defer_to_thread: Callable) -> None:
        self.what = what
        self.command = command
        self.fd = fd
        self._temp_dir = temp_dir
        self._defer_to_thread = defer_to_thread

    def close(self) -> None:
        """Close the caller's end (the tool then sees the end of its input, or a broken pipe)."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    async def finished(self) -> None:
        """Once the tool ended: AgentError with what it said unless it succeeded."""
        try:
            await self.command.result
        except CommandFailed as e:
            said = tool_error(e.result.stderr.decode("utf-8", "replace"))
            raise AgentError(f"{self.what} failed: {said}" if said and e.result.exit_code else
                             f"{self.what} failed: {e}") from None
        finally:
            await self._remove_temp_dir()

    async def abort(self) -> None:
        """Kill the tool's process group (a backup leaves no lock or stage on the server behind it)."""
        try:
            await self.command.terminate()
        finally:
            await self._remove_temp_dir()

    async def _remove_temp_dir(self) -> None:
        temp_dir, self._temp_dir = self._temp_dir, None
        if temp_dir is not None:
            await self._defer_to_thread(shutil.rmtree, temp_dir, True)


async def start_backup(runner, tool: Tool, defaults_file: str, datadir: str, defer_to_thread: Callable,
                       *, idle_timeout: float | None) -> ToolStream:
    """Start the backup of ``datadir``'s server streaming into a pipe; its temporary files go to a
    private directory of the agent's, removed when it ends.  ``idle_timeout``: a stall (nothing on
    stderr, where the tools log their progress) kills it."""
    temp_dir = await defer_to_thread(tempfile.mkdtemp, ".orchagent-hotbackup")  # 0700, root's
    read_end, write_end = stream_pipe()
    try:
        command = runner.start(backup_argv(tool, defaults_file, temp_dir, datadir), stdout_fd=write_end,
                               timeout=None, idle_timeout=idle_timeout)
    except BaseException:
        os.close(read_end)
        await defer_to_thread(shutil.rmtree, temp_dir, True)
        raise
    return ToolStream(f"{tool.name} --backup", command, read_end, temp_dir, defer_to_thread)


def start_extract(runner, tool: Tool, directory: str, defer_to_thread: Callable) -> ToolStream:
    """Start unpacking a stream written into the returned pipe end into ``directory`` (the agent's own,
    closed to others, so the tool working there by path is safe)."""
    read_end, write_end = stream_pipe()
    try:
        command = runner.start(extract_argv(tool, directory), stdin_fd=read_end, timeout=None)
    except BaseException:
        os.close(write_end)
        raise
    return ToolStream(f"{tool.extractor} -x", command, write_end, None, defer_to_thread)


def check_private_file(path: str, what: str) -> None:
    """Conflict unless ``path`` is a root-only file whose path only root can change.  Blocking."""
    os.close(safepath.open_private_file(path, what=what, fixed=True))


def volume_path(datadir: str) -> str:
    """``/hotbackup<datadir>``, or ``/hotbackup`` when the datadir's name would not survive ``mountlv?lv=``."""
    candidate = VOLUME_ROOT + datadir.rstrip("/")
    try:
        return validate.volume_identifier(candidate, "lv")
    except InvalidInput:
        return VOLUME_ROOT


# --- the backend -------------------------------------------------------------------------------


@attrs.frozen
class VirtualMount:
    """What a "mounted" hot-backup volume shows: the live datadir, copied at send time."""

    volume: LogicalVolume
    datadir: str
    tool: str


class HotBackupBackend:
    """The ``hotbackup`` snapshot backend; "mounted" is kept in memory (a restart unmounts)."""

    def __init__(self, config, runner, mysql, defer_to_thread: Callable):
        self._config = config
        self._tool = TOOLS[config.hot_backup_tool]
        self._runner = runner
        self._mysql = mysql
        self._defer_to_thread = defer_to_thread
        self._mounted: VirtualMount | None = None

    async def list_volumes(self) -> list[LogicalVolume]:
        path = volume_path(await self._mysql.datadir())
        return [LogicalVolume(name=HOT_BACKUP_VOLUME, group_name=self._tool.name, path=path, is_snapshot=True,
                              snapshot_percent=0.0)]

    async def volume_at(self, entry: MountEntry, volumes: list[LogicalVolume]) -> LogicalVolume | None:
        return None  # its volume is never in mountinfo

    async def mount(self, volume: LogicalVolume, mount_point: str) -> None:
        """Check that a backup can run now; then the volume reads as mounted."""
        version = await self.check()
        datadir = await self._mysql.datadir()
        self._mounted = VirtualMount(volume, datadir, self._tool.name)
        log.info("hot-backup volume {volume} ready: {tool} {version} can back up {datadir}",
                 volume=volume.path, tool=self._tool.name, version=version.version, datadir=datadir)

    async def mounted(self) -> VirtualMount | None:
        return self._mounted

    async def unmount(self) -> None:
        if self._mounted is not None:
            log.info("hot-backup volume {volume} unmounted", volume=self._mounted.volume.path)
        self._mounted = None

    async def remove(self, volume: LogicalVolume) -> None:
        raise Conflict(f"{volume.path} is the hotbackup backend's virtual volume (a copy taken at send time); "
                       "there is nothing to remove")

    async def create_snapshot(self, datadir: str) -> None:
        raise Conflict("the hotbackup backend takes a consistent copy at send time; nothing to create")

    # --- the checks of mountlv ---

    async def defaults_file(self) -> str:
        """``HotBackupDefaultsFile``, once it shows itself private (Conflict otherwise)."""
        path = self._config.hot_backup_defaults_file
        await self._defer_to_thread(check_private_file, path, "HotBackupDefaultsFile")
        return path

    async def check(self) -> ToolVersion:
        """The tool answers, the credentials reach this datadir's server, the binary log is on when replication
        is wanted."""
        tool = self._tool
        try:
            result = await self._runner.run(version_argv(tool), parsed=True, timeout=60)
        except CommandFailed as e:
            raise Conflict(f"{tool.name} --version failed: {tool_error(e.result.stderr.decode('utf-8', 'replace'))}; "
                           f"install it (HotBackupTool {tool.name})") from None
        except AgentError as e:
            raise Conflict(f"{tool.name} cannot run ({e}); install it or set HotBackupTool") from None
        version = parse_version(tool, result.text() + result.stderr.decode("utf-8", "replace"))
        defaults_file = await self.defaults_file()
        try:
            result = await self._runner.run(server_check_argv(tool, defaults_file), parsed=True, timeout=60)
        except CommandFailed as e:
            said = tool_error(e.result.stderr.decode("utf-8", "replace"))
            raise Conflict(f"the backup user of HotBackupDefaultsFile {defaults_file} cannot reach the server: "
                           f"{said}; fix the user, password or socket there") from None
        variables = parse_variables(result.text())
        datadir = await self._mysql.datadir()
        served = os.path.normpath(variables.get("datadir") or "/")
        if served != datadir and not await self._defer_to_thread(same_directory, served, datadir):
            # the option file reaches another server than the one whose datadir the agent seeds
            raise Conflict(f"the server HotBackupDefaultsFile {defaults_file} reaches keeps its data in {served}, "
                           f"not in the datadir {datadir}: point its socket (or host and port) at this server")
        if self._config.seed_start_replication and variables.get("log_bin", "").upper() not in ("ON", "1"):
            raise Conflict("the binary log is off on this server (log_bin), so a backup records no position "
                           "to replicate from, and targets have SeedStartReplication: turn log_bin on")
        return version
