"""Relay logs and binary logs: finding them, listing them, extracting and applying their bytes.

V1 interpolated file names from the request into shell pipelines (contract D.1.3), looked for the
relay index only in the datadir and mis-joined absolute entries (D.1.23), panicked on an empty
index (D.1.18), returned text from the "binary" route (D.1.24) and left temp files behind
(D.1.20).  Here a requested name must be a file listed in the server's own binlog or relay-log
index, the byte extraction of contract C.2.4 is done in Python (streamed, no temp file), and
every temp file is removed.

Applying a relay log runs ``mysqlbinlog``'s text through the admin's client as root, and that
text carries what the log's events say: a crafted Query event (a line ``system id`` in a version
comment) would be a client command.  So the log's events must verify first
(:mod:`orchagent.host.binlogfile`), and the client must show that it refuses client commands
(MariaDB's sandbox mode, switched on by the first line of its input) and local files (LOAD DATA
LOCAL INFILE).
"""

from __future__ import annotations

import base64
import binascii
import glob
import os
import re
import tempfile
import zlib
from typing import TYPE_CHECKING, BinaryIO, Iterable, Iterator, Sequence

import attrs

from orchagent import logs
from orchagent.errors import AgentError, InvalidInput, NotFound
from orchagent.host.binlogfile import BINLOG_MAGIC, HEAD_BYTES, header_end, verify_events
from orchagent.interfaces import ProcessRunner, ThreadRunner

if TYPE_CHECKING:
    from orchagent.host.mysql import MySQL  # its option files and datadir locate the indexes

log = logs.logger(__name__)

CHUNK_SIZE = 1 << 20
MAX_NAME_LENGTH = 4096

#: The MariaDB client's sandbox command: from this line on, no system, \!, source, pager, tee...
SANDBOX_LINE = b"\\-\n"

#: What MySQLClientCommand is fed before every apply, the answer that shows it safe, and what to
#: fix otherwise.  ``\.`` is ``source``: refused in sandbox mode, unknown in ``--binary-mode``
#: (which parses no client command).  LOAD DATA LOCAL would let a statement make the client read
#: any file; the capability is checked before the table, which need not exist.
CLIENT_PROBES = (
    (SANDBOX_LINE + b"\\. /dev/null\n", re.compile(rb"Not allowed in the sandbox mode|Unknown command '\\\.'"),
     "does not refuse client commands (system, \\!, source...): use MariaDB's client from 10.5.25, "
     "10.6.18, 10.11.8 or 11.0.6 on, whose sandbox mode orchagent switches on"),
    (SANDBOX_LINE + b"LOAD DATA LOCAL INFILE '/dev/null' INTO TABLE mysql.orchagent_probe;\n",
     re.compile(rb"ERROR (4166|1148|3948) "),
     "may read local files for LOAD DATA LOCAL INFILE: add --local-infile=0 to it (or local-infile=0 "
     "to the [client] group of its option file)"),
)

#: Per kind of log: (index option, base-name option, suffix after log_basename, glob in the datadir).
_INDEX_OPTIONS = {
    "relay": ("relay_log_index", "relay_log", "-relay-bin", "*relay*.index"),
    "binlog": ("log_bin_index", "log_bin", "-bin", "*.index"),
}


@attrs.frozen
class BinlogCoordinates:
    log_file: str
    log_pos: int
    type: int = 1  # V1's enum: 0 binary log, 1 relay log


# --- pure functions --------------------------------------------------------------------------


def parse_index(text: str, index_path: str) -> list[str]:
    """The log files an index lists: relative entries against the index's directory, absolute ones kept."""
    directory = os.path.dirname(index_path)
    return [os.path.normpath(os.path.join(directory, line.strip())) for line in text.splitlines() if line.strip()]


def configured_index(options: dict[str, str | None], datadir: str, kind: str) -> str | None:
    """The index path the option files name for ``kind`` ("relay" or "binlog"), or None."""
    index_option, base_option, basename_suffix, _ = _INDEX_OPTIONS[kind]
    if options.get(index_option):
        name = options[index_option]
    elif options.get(base_option):
        name = options[base_option] + ".index"
    elif options.get("log_basename") and (kind == "relay" or base_option in options):
        name = options["log_basename"] + basename_suffix + ".index"
    else:
        return None
    return os.path.normpath(os.path.join(datadir, name))


def check_log_name(name: str) -> None:
    """A requested log name is a bare file name or an absolute path, nothing stranger."""
    if not name or len(name) > MAX_NAME_LENGTH or any(c in name for c in "\0\r\n"):
        raise InvalidInput(f"invalid log file name {name[:100]!r}: give a file name from the server's index")
    if "/" in name and not os.path.isabs(name):
        raise InvalidInput(f"invalid log file name {name[:100]!r}: give a bare file name or an absolute path")


def resolve_listed(name: str, listed: Sequence[str]) -> str:
    """The listed file that ``name`` (an absolute path or a bare file name) designates."""
    check_log_name(name)
    if os.path.isabs(name):
        matches = [path for path in listed if path == os.path.normpath(name)]
    else:
        matches = [path for path in listed if os.path.basename(path) == name]
    if not matches:
        raise NotFound(f"{name[:200]} is not listed in the server's binlog or relay-log index")
    if len(set(matches)) > 1:
        raise InvalidInput(f"{name} names several listed logs ({', '.join(matches)}); give the full path")
    return matches[0]


# --- blocking helpers (run in a thread) -------------------------------------------------------


def find_index(configured: str | None, datadir: str, kind: str) -> str | None:
    """The configured index if it exists, else the one index file of ``kind`` in the datadir."""
    if configured:
        return configured if os.path.isfile(configured) else None
    pattern = os.path.join(glob.escape(datadir), _INDEX_OPTIONS[kind][3])
    found = sorted(path for path in glob.glob(pattern)
                   if kind == "relay" or "relay" not in os.path.basename(path))
    if len(found) > 1:
        raise AgentError(f"several {kind} log indexes in {datadir} ({', '.join(found)}); set "
                         f"{_INDEX_OPTIONS[kind][0]} in the server's option files")
    return found[0] if found else None


def read_index(index_path: str) -> list[str]:
    try:
        with open(index_path, encoding="utf-8", errors="replace") as f:
            return parse_index(f.read(), index_path)
    except OSError as e:
        raise AgentError(f"cannot read the log index {index_path}: {e.strerror}") from None


def file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError as e:
        raise AgentError(f"cannot read the size of {path}: {e.strerror}") from None


def log_bytes(paths: Sequence[str], start: int, stop: int) -> Iterator[bytes]:
    """Contract C.2.4's raw stream: one log's header, then events from ``start`` in the first
    file to ``stop`` (0: the end) in the last, later files without their own header."""
    for number, path in enumerate(paths):
        try:
            f = open(path, "rb")
        except OSError as e:
            raise AgentError(f"cannot read {path}: {e.strerror}") from None
        with f:
            header = header_end(f.read(HEAD_BYTES), path)
            size = os.fstat(f.fileno()).st_size
            low = header if number else start
            if number == 0 and start:
                if not header <= start <= size:
                    raise InvalidInput(f"start position {start} is outside {path} (events span {header}..{size})")
                yield from _read_range(f, 0, header)
            high = min(stop, size) if stop and number == len(paths) - 1 else size
            if high < low:
                raise InvalidInput(f"stop position {stop} is before the first event read from {path} ({low})")
            yield from _read_range(f, low, high)


def file_chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        yield from iter(lambda: f.read(CHUNK_SIZE), b"")


def gzip_base64(chunks: Iterable[bytes]) -> str:
    """What V1 answered with ``| gzip | base64``: gzip data in base64 with 76-column lines."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    compressed = [compressor.compress(chunk) for chunk in chunks]
    compressed.append(compressor.flush())
    return base64.encodebytes(b"".join(compressed)).decode("ascii")


def decode_relaylog(body: BinaryIO, destination: str, max_bytes: int) -> int:
    """base64(gzip(relay log)) from ``body`` into the file ``destination``; the bytes written.

    Streamed in chunks; the decoded log may not exceed ``max_bytes`` (a gzip bomb stops there)
    and must be a binary log.
    """
    body.seek(0)
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    pending = b""
    written = 0
    with open(destination, "wb") as out:
        while chunk := body.read(CHUNK_SIZE):
            data = pending + chunk.translate(None, b" \t\r\n")
            usable = len(data) - len(data) % 4
            pending = data[usable:]
            try:
                compressed = base64.b64decode(data[:usable], validate=True)
            except binascii.Error:
                raise InvalidInput("the body is not base64 text (expected base64(gzip(relay log)))") from None
            try:
                while compressed:
                    piece = decompressor.decompress(compressed, CHUNK_SIZE)
                    written += len(piece)
                    if written > max_bytes:
                        raise InvalidInput(f"the decoded relay log exceeds ApplyRelaylogMaxBytes ({max_bytes} bytes)")
                    out.write(piece)
                    compressed = decompressor.unconsumed_tail
            except zlib.error:
                raise InvalidInput("the body is not gzip data in base64 (expected base64(gzip(relay log)))") from None
    if pending or not decompressor.eof or decompressor.unused_data:
        raise InvalidInput("the body is truncated or has trailing data (expected base64(gzip(relay log)))")
    with open(destination, "rb") as f:
        if f.read(len(BINLOG_MAGIC)) != BINLOG_MAGIC:
            raise InvalidInput("the decoded body is not a MySQL relay log (bad magic number)")
    return written


def write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def remove_files(paths: Iterable[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _read_range(f: BinaryIO, low: int, high: int) -> Iterator[bytes]:
    f.seek(low)
    remaining = high - low
    while remaining > 0:
        chunk = f.read(min(CHUNK_SIZE, remaining))
        if not chunk:
            return
        remaining -= len(chunk)
        yield chunk


# --- the service -------------------------------------------------------------------------------


class ReplicationLogs:
    """The server's relay logs and binary logs, as orchestrator's relay-log routes need them."""

    def __init__(self, mysql: MySQL, runner: ProcessRunner, *, in_thread: ThreadRunner, client_command: str,
                 max_apply_bytes: int, temp_directory: str | None = None):
        self._mysql = mysql
        self._runner = runner
        self._in_thread = in_thread
        self._client_command = client_command
        self._max_apply_bytes = max_apply_bytes
        self._temp_directory = temp_directory

    async def relay_index_file(self) -> str:
        path = await self._index("relay")
        if path is None:
            raise NotFound("no relay log index found (is this server a replica?); set relay_log_index "
                           "in the server's option files if it lives outside the datadir")
        return path

    async def relay_log_files(self) -> list[str]:
        return await self._in_thread(read_index, await self.relay_index_file())

    async def relay_log_end_coordinates(self) -> BinlogCoordinates:
        files = await self.relay_log_files()
        if not files:
            raise NotFound(f"the relay log index {await self.relay_index_file()} lists no relay logs")
        return BinlogCoordinates(files[-1], await self._in_thread(file_size, files[-1]))

    async def binlog_text(self, names: Sequence[str], start: int, stop: int) -> str:
        """``mysqlbinlog`` output for the named logs, gzipped, in base64 (V1's binlog-contents)."""
        paths = await self._listed(names)
        argv = ["mysqlbinlog", "--no-defaults", *paths]
        argv += [f"--start-position={start}"] if start else []
        argv += [f"--stop-position={stop}"] if stop else []
        output = self._temp_file(".txt")
        try:
            await self._runner.run(argv, name="mysqlbinlog", privileged=True, stdout_path=output)
            return await self._in_thread(lambda: gzip_base64(file_chunks(output)))
        finally:
            await self._in_thread(remove_files, [output])

    async def binlog_bytes(self, names: Sequence[str], start: int, stop: int) -> str:
        """The raw bytes of the named logs (C.2.4), gzipped, in base64."""
        paths = await self._listed(names)
        return await self._in_thread(lambda: gzip_base64(log_bytes(paths, start, stop)))

    async def relaylog_tail(self, name: str, start: int) -> str:
        """Raw bytes from ``start`` in relay log ``name`` to the end of the last relay log."""
        check_log_name(name)
        files = await self.relay_log_files()
        first = resolve_listed(name, files)
        tail = files[files.index(first):]
        return await self._in_thread(lambda: gzip_base64(log_bytes(tail, start, 0)))

    async def apply_relaylog(self, body: BinaryIO, size: int) -> None:
        """Decode base64(gzip(relay log)), verify its events, feed ``mysqlbinlog``'s SQL to
        ``MySQLClientCommand`` in sandbox mode (refused unless the client shows it is safe)."""
        if not self._client_command:
            raise AgentError("MySQLClientCommand is empty; set it to the client command that applies SQL")
        if size > self._max_apply_bytes:
            raise InvalidInput(f"the body has {size} bytes, more than ApplyRelaylogMaxBytes ({self._max_apply_bytes})")
        if size == 0:
            raise InvalidInput("the body is empty; send base64(gzip(relay log)) as the request body")
        relaylog, probe, statements = self._temp_file(".bin"), self._temp_file(".sql"), self._temp_file(".sql")
        try:
            await self._in_thread(decode_relaylog, body, relaylog, self._max_apply_bytes)
            events = await self._in_thread(verify_events, relaylog)
            for probe_input, safe_answer, fix in CLIENT_PROBES:
                await self._in_thread(write_file, probe, probe_input)
                await self._probe_client(probe, safe_answer, fix)
            await self._in_thread(write_file, statements, SANDBOX_LINE)
            await self._runner.run(["mysqlbinlog", "--no-defaults", "--verify-binlog-checksum", relaylog],
                                   name="mysqlbinlog", stdout_path=statements)
            await self._runner.run_configured(self._client_command, name="MySQLClientCommand",
                                              stdin_path=statements)
        finally:
            await self._in_thread(remove_files, [relaylog, probe, statements])
        log.info("applied a relay log of {events} events ({size} encoded bytes) through MySQLClientCommand "
                 "in sandbox mode", events=events, size=size)

    async def _probe_client(self, probe: str, safe_answer: re.Pattern, fix: str) -> None:
        """Refuse a client whose answer to the input in ``probe`` does not show it safe."""
        result = await self._runner.run_configured(self._client_command, name="MySQLClientCommand",
                                                   stdin_path=probe, check=False)
        if not safe_answer.search(result.stderr):
            said = result.stderr.decode("utf-8", "replace").strip()[-300:]
            raise AgentError(f"MySQLClientCommand {fix}; nothing was applied"
                             + (f"; the client said: {said}" if said else ""))

    async def _index(self, kind: str) -> str | None:
        datadir = await self._mysql.datadir()
        configured = configured_index(await self._mysql.server_options(), datadir, kind)
        return await self._in_thread(find_index, configured, datadir, kind)

    async def _listed(self, names: Sequence[str]) -> list[str]:
        if not names:
            raise InvalidInput("no binlog files named")
        for name in names:
            check_log_name(name)
        listed = []
        for kind in ("binlog", "relay"):
            index = await self._index(kind)
            if index is not None:
                listed += await self._in_thread(read_index, index)
        return [resolve_listed(name, listed) for name in names]

    def _temp_file(self, suffix: str) -> str:
        descriptor, path = tempfile.mkstemp(prefix="orchagent-relaylog-", suffix=suffix, dir=self._temp_directory)
        os.close(descriptor)
        return path
