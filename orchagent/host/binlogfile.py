"""The binary-log file format: headers, byte ranges, uploaded relay logs and their events.

Pure functions and blocking helpers (run in a thread) for :mod:`orchagent.host.relaylog`: the
byte extraction of contract C.2.4 (streamed, one header, then events from ``start`` to ``stop``),
V1's ``| gzip | base64`` answer, decoding an uploaded base64(gzip(relay log)) with a size cap, and
checking that its events tile the file with valid CRC32 checksums and hold no LOAD DATA event.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import zlib
from typing import BinaryIO, Iterable, Iterator, Sequence

from orchagent.errors import AgentError, InvalidInput

BINLOG_MAGIC = b"\xfebin"
FORMAT_DESCRIPTION_EVENT = 15
_EVENT_HEADER_SIZE = 19  # timestamp 4, type 1, server id 4, event size 4, next position 4, flags 2
CHUNK_SIZE = 1 << 20
_CHECKSUM_SIZE = 4  # a CRC32 after each event, when the Format Description event says so
_BINLOG_IN_USE = 0x1  # a flag of the Format Description event, cleared on close without a new checksum
_MAX_FORMAT_DESCRIPTION = 1 << 16
_SERVER_VERSION = slice(_EVENT_HEADER_SIZE + 2, _EVENT_HEADER_SIZE + 52)  # after the binlog version
_FIRST_WITH_CHECKSUMS = {"MariaDB": (5, 3, 0), "MySQL": (5, 6, 1)}  # older logs have no algorithm byte

#: Events that ``mysqlbinlog`` turns into LOAD DATA LOCAL INFILE of a file it writes itself.
_LOAD_EVENTS = {6: "Load", 8: "Create_file", 9: "Append_block", 10: "Exec_load", 11: "Delete_file",
                12: "New_load", 17: "Begin_load_query", 18: "Execute_load_query"}


def header_end(head: bytes, path: str) -> int:
    """Where the first event (the Format Description event) ends: V1's "header size"."""
    if len(head) < len(BINLOG_MAGIC) + _EVENT_HEADER_SIZE or not head.startswith(BINLOG_MAGIC):
        raise AgentError(f"{path} is not a MySQL binary or relay log (bad magic number)")
    event = head[len(BINLOG_MAGIC):]
    if event[4] != FORMAT_DESCRIPTION_EVENT:
        raise AgentError(f"{path} does not start with a Format Description event")
    return len(BINLOG_MAGIC) + int.from_bytes(event[9:13], "little")


def log_bytes(paths: Sequence[str], start: int, stop: int) -> Iterator[bytes]:
    """Contract C.2.4's raw stream: one log's header, then events from ``start`` in the first
    file to ``stop`` (0: the end) in the last, later files without their own header."""
    for number, path in enumerate(paths):
        try:
            f = open(path, "rb")
        except OSError as e:
            raise AgentError(f"cannot read {path}: {e.strerror}") from None
        with f:
            header = header_end(f.read(len(BINLOG_MAGIC) + _EVENT_HEADER_SIZE), path)
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


def verify_events(path: str) -> int:
    """Check that the events of the log at ``path`` tile it and carry valid checksums; their number.

    As in ``mysqlbinlog``, the last Format Description event says whether the events after it end
    with a CRC32 (``binlog_checksum``).  A log written with ``binlog_checksum=NONE`` is checked
    for structure only.  InvalidInput names the first event that fails.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        offset = f.seek(len(BINLOG_MAGIC))
        checksummed: bool | None = None  # unknown before the first Format Description event
        count = 0
        while offset < size:
            header = f.read(_EVENT_HEADER_SIZE)
            length = int.from_bytes(header[9:13], "little") if len(header) == _EVENT_HEADER_SIZE else 0
            if length < _EVENT_HEADER_SIZE or offset + length > size:
                raise _unverified(offset, f"has an impossible length ({length} bytes; {size - offset} left)")
            if header[4] in _LOAD_EVENTS:
                raise InvalidInput(f"relay log event at offset {offset} is a LOAD DATA event "
                                   f"({_LOAD_EVENTS[header[4]]}), which orchagent does not apply (the client "
                                   f"would read a local file); nothing was applied")
            if header[4] == FORMAT_DESCRIPTION_EVENT:
                if length > _MAX_FORMAT_DESCRIPTION:
                    raise _unverified(offset, f"is a Format Description event of {length} bytes")
                event = header + f.read(length - _EVENT_HEADER_SIZE)
                checksummed = _has_checksums(event, offset)
                if checksummed:
                    cleared = event[:17] + bytes([event[17] & ~_BINLOG_IN_USE]) + event[18:-_CHECKSUM_SIZE]
                    _check_crc(zlib.crc32(cleared), event[-_CHECKSUM_SIZE:], offset)
            elif checksummed is None:
                raise _unverified(offset, "comes before any Format Description event")
            else:
                remaining = length - _EVENT_HEADER_SIZE - (_CHECKSUM_SIZE if checksummed else 0)
                if remaining < 0:
                    raise _unverified(offset, f"is too short ({length} bytes) to hold its checksum")
                crc = zlib.crc32(header)
                while remaining:
                    chunk = f.read(min(CHUNK_SIZE, remaining))
                    crc = zlib.crc32(chunk, crc)
                    remaining -= len(chunk)
                if checksummed:
                    _check_crc(crc, f.read(_CHECKSUM_SIZE), offset)
            offset += length
            count += 1
    return count


def _has_checksums(event: bytes, offset: int) -> bool:
    """Whether a Format Description event says the events after it end with a CRC32."""
    if len(event) < _SERVER_VERSION.stop + 6 + 1 + _CHECKSUM_SIZE:
        raise _unverified(offset, f"is a Format Description event of only {len(event)} bytes")
    version = event[_SERVER_VERSION].split(b"\0")[0].decode("ascii", "replace")
    numbers = re.match(r"(\d+)\.(\d+)\.(\d+)", version)
    if numbers is None:
        raise _unverified(offset, f"is a Format Description event with no server version ({version[:50]!r})")
    server = "MariaDB" if "MariaDB" in version or "-maria-" in version else "MySQL"
    if tuple(map(int, numbers.groups())) < _FIRST_WITH_CHECKSUMS[server]:
        return False
    algorithm = event[-_CHECKSUM_SIZE - 1]
    if algorithm not in (0, 1):  # OFF, CRC32
        raise _unverified(offset, f"names the unknown checksum algorithm {algorithm}")
    return algorithm == 1


def _check_crc(crc: int, stored: bytes, offset: int) -> None:
    if crc.to_bytes(_CHECKSUM_SIZE, "little") != stored:
        raise _unverified(offset, "does not verify (its CRC32 checksum differs)")


def _unverified(offset: int, problem: str) -> InvalidInput:
    return InvalidInput(f"relay log event at offset {offset} {problem}; nothing was applied")


def _read_range(f: BinaryIO, low: int, high: int) -> Iterator[bytes]:
    f.seek(low)
    remaining = high - low
    while remaining > 0:
        chunk = f.read(min(CHUNK_SIZE, remaining))
        if not chunk:
            return
        remaining -= len(chunk)
        yield chunk
