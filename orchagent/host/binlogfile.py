"""The binary (and relay) log file format: where the header ends, and whether every event verifies.

A relay log posted to ``apply-relaylog-contents`` is replayed as root through the MySQL client,
so before anything runs each of its events must tile the file and carry a valid CRC32
(``mysqlbinlog --verify-binlog-checksum`` exits 0 even when one does not), and no event may be
of a LOAD DATA kind, which ``mysqlbinlog`` turns into the client reading a local file.
"""

from __future__ import annotations

import os
import re
import zlib

from orchagent.errors import AgentError, InvalidInput

BINLOG_MAGIC = b"\xfebin"
FORMAT_DESCRIPTION_EVENT = 15
_EVENT_HEADER_SIZE = 19  # timestamp 4, type 1, server id 4, event size 4, next position 4, flags 2
_CHUNK_SIZE = 1 << 20
_CHECKSUM_SIZE = 4  # a CRC32 after each event, when the Format Description event says so
_BINLOG_IN_USE = 0x1  # a flag of the Format Description event, cleared on close without a new checksum
_MAX_FORMAT_DESCRIPTION = 1 << 16
_SERVER_VERSION = slice(_EVENT_HEADER_SIZE + 2, _EVENT_HEADER_SIZE + 52)  # after the binlog version
_FIRST_WITH_CHECKSUMS = {"MariaDB": (5, 3, 0), "MySQL": (5, 6, 1)}  # older logs have no algorithm byte
HEAD_BYTES = len(BINLOG_MAGIC) + _EVENT_HEADER_SIZE  # what header_end needs to read

#: Events that ``mysqlbinlog`` turns into LOAD DATA LOCAL INFILE of a file it writes itself.
_LOAD_EVENTS = {6: "Load", 8: "Create_file", 9: "Append_block", 10: "Exec_load", 11: "Delete_file",
                12: "New_load", 17: "Begin_load_query", 18: "Execute_load_query"}


def header_end(head: bytes, path: str) -> int:
    """Where the first event (the Format Description event) ends: V1's "header size"."""
    if len(head) < HEAD_BYTES or not head.startswith(BINLOG_MAGIC):
        raise AgentError(f"{path} is not a MySQL binary or relay log (bad magic number)")
    event = head[len(BINLOG_MAGIC):]
    if event[4] != FORMAT_DESCRIPTION_EVENT:
        raise AgentError(f"{path} does not start with a Format Description event")
    return len(BINLOG_MAGIC) + int.from_bytes(event[9:13], "little")



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
                    chunk = f.read(min(_CHUNK_SIZE, remaining))
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
