"""The wire format of the built-in seed transfer: frames and tree entries.

Pure code (no I/O, no reactor), shared by the sender and the receiver so both sides agree by
construction and the format can be tested in isolation.  Every frame is
``kind (1 byte) | payload length (4 bytes, big endian) | payload``.  After the handshake
(:mod:`orchagent.seed.authentication`) the sender streams the tree and the receiver only sends
PROGRESS keepalives::

    TOTALS files, bytes             (any time; from a quick stat walk)
    ENTRY  dir | symlink | file     (a directory always comes before what it contains; v7: a file's may
                                    name a range of it, offset and length, sent as a file of its own, so
                                    a large file's ranges go over several lanes: :mod:`orchagent.seed.lanes`)
    DATA   offset, bytes            (file data; holes of sparse files are simply not sent)
    ZDATA  offset, length, zstd     (file data compressed: ``length`` bytes once decompressed)
    CHECKPOINT tag                  (inside a large file, every few MB: its data so far is verified)
    FILE_END tag                    (after each file's DATA frames)
    END    files, bytes, tag        (the counts the receiver must have seen)

A hot seed (v4) carries one byte stream, a backup tool's, instead of a tree: ``STREAM port``
(the source's MySQL port) opens it, DATA/ZDATA frames carry it at consecutive offsets as a
file's data, then ``FILE_END`` and ``END 1, bytes``.
    receiver -> DONE  proof         (everything authenticated, fsynced and in place)
                or FAIL reason

Before the stream, right after ACCEPT, the receiver says where it begins (v5, :mod:`orchagent.seed.resumption`):
``RESUME`` (signed with the session key) carries what it verified on earlier connections of the seed, nothing
on the first.  A receiver still busy with a seed's dropped connection answers a reconnecting sender ``BUSY``.
Either side may send FAIL with a reason at any frame boundary.
"""

from __future__ import annotations

import enum
import os
import struct
from typing import Iterator

import attrs

from orchagent.errors import AgentError

MAX_META_PAYLOAD = 64 * 1024  # every frame but DATA is small; a bigger one is garbage
MAX_DATA_PAYLOAD = 64 * 1024 * 1024
MAX_BLOCK_BYTES = 4 * 1024 * 1024  # the most a ZDATA frame may decompress to (bounds a decompression bomb)

HEADER = struct.Struct("!BI")
DATA_OFFSET = struct.Struct("!Q")
DATA_START = HEADER.size + DATA_OFFSET.size  # where a DATA frame's file bytes begin
ZDATA_HEADER = struct.Struct("!QI")  # offset, decompressed length; the compressed bytes follow
MAX_ZDATA_PAYLOAD = ZDATA_HEADER.size + MAX_BLOCK_BYTES  # compressed only when that is smaller
COUNTS = struct.Struct("!QQ")  # files, bytes
_ENTRY = struct.Struct("!BIqQIIHHBB")  # kind mode mtime_ns size uid gid len(path) len(target) len(user) len(group)
_PART = struct.Struct("!QQ")  # after a file entry's names (v7): the range it carries, offset and length
Part = tuple[int, int]  # a range of a file: (offset, length)


class Kind(enum.IntEnum):
    HELLO = 1
    AUTH = 2
    ACCEPT = 3
    REFUSE = 4
    TOTALS = 5
    ENTRY = 6
    DATA = 7
    FILE_END = 8
    END = 9
    DONE = 10
    FAIL = 11
    PROGRESS = 12
    ZDATA = 13
    STREAM = 14
    RESUME = 15
    CHECKPOINT = 16
    BUSY = 17


class EntryKind(enum.IntEnum):
    FILE = 0
    DIR = 1
    SYMLINK = 2


class TransferFailed(AgentError):
    """A seed transfer did not complete; the message says what failed."""


class ProtocolError(TransferFailed):
    """The peer sent something this protocol does not allow."""


class ChecksumMismatch(TransferFailed):
    """A file, or the stream, arrived different from what the sender sent (its MAC does not match)."""


# --- frames ----------------------------------------------------------------------------------


def frame(kind: Kind, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def data_header(offset: int, length: int) -> bytes:
    """Header and offset of a DATA frame; the ``length`` data bytes follow separately."""
    return HEADER.pack(Kind.DATA, DATA_OFFSET.size + length) + DATA_OFFSET.pack(offset)


def zdata_header(offset: int, length: int, compressed_size: int) -> bytes:
    """Header of a ZDATA frame; its ``compressed_size`` bytes follow separately (not copied)."""
    return HEADER.pack(Kind.ZDATA, ZDATA_HEADER.size + compressed_size) + ZDATA_HEADER.pack(offset, length)


def zdata_frame(offset: int, length: int, compressed: bytes) -> bytes:
    """A ZDATA frame: ``compressed`` (one zstd frame) decompresses to ``length`` bytes at ``offset``."""
    return zdata_header(offset, length, len(compressed)) + compressed


def payload_limit(kind: int) -> int:
    """The largest payload a frame of ``kind`` may have in the data stream."""
    return {Kind.DATA: MAX_DATA_PAYLOAD, Kind.ZDATA: MAX_ZDATA_PAYLOAD}.get(kind, MAX_META_PAYLOAD)


STREAM_PORT = struct.Struct("!H")
#: What a STREAM frame opens, to the decoder: a "file" of unknown length, at consecutive offsets.
STREAM_ENTRY_PATH = b"stream"
MAX_STREAM_BYTES = 1 << 62


def stream_frame(port: int) -> bytes:
    return frame(Kind.STREAM, STREAM_PORT.pack(port))


def parse_stream(payload: bytes) -> int:
    """The source's MySQL port a STREAM frame carries."""
    if len(payload) != STREAM_PORT.size:
        raise ProtocolError("malformed stream frame")
    (port,) = STREAM_PORT.unpack(payload)
    if not 0 < port < 65536:
        raise ProtocolError(f"bad MySQL port {port} in the stream frame")
    return port


def counts_frame(kind: Kind, files: int, nbytes: int) -> bytes:
    return frame(kind, COUNTS.pack(files, nbytes))


def parse_counts(payload: bytes) -> tuple[int, int]:
    if len(payload) != COUNTS.size:
        raise ProtocolError("malformed counts frame")
    return COUNTS.unpack(payload)


def reason_frame(kind: Kind, reason: str) -> bytes:
    return frame(kind, reason.encode("utf-8", "replace")[:MAX_META_PAYLOAD])


class FrameBuffer:
    """Collects bytes until whole (small) frames are available; used during the handshake."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def frames(self) -> Iterator[tuple[Kind, bytes]]:
        while len(self._buffer) >= HEADER.size:
            kind, length = HEADER.unpack_from(self._buffer)
            if length > MAX_META_PAYLOAD:
                raise ProtocolError(f"oversized frame ({length} bytes) during the handshake")
            if len(self._buffer) < HEADER.size + length:
                return
            payload = bytes(self._buffer[HEADER.size:HEADER.size + length])
            del self._buffer[:HEADER.size + length]
            yield kind_of(kind), payload

    def leftover(self) -> bytes:
        """Bytes received after the last whole frame (the start of the data stream)."""
        rest, self._buffer = bytes(self._buffer), bytearray()
        return rest


def kind_of(value: int) -> Kind:
    try:
        return Kind(value)
    except ValueError:
        raise ProtocolError(f"unknown frame kind {value}") from None


# --- tree entries ----------------------------------------------------------------------------


@attrs.frozen
class Entry:
    """One directory, symlink or regular file of the tree, relative to its root."""

    kind: EntryKind
    path: bytes  # relative, "/"-separated, validated by :func:`check_relative_path`
    mode: int  # permission bits (S_IMODE)
    mtime_ns: int
    size: int = 0  # files: logical size (holes included)
    uid: int = 0
    gid: int = 0
    user: bytes = b""  # owner names, so ownership maps by name as tar does
    group: bytes = b""
    target: bytes = b""  # symlinks: where the link points (never followed)
    part: Part | None = None  # files: the range this entry carries, when a large file goes over several lanes

    @property
    def start(self) -> int:
        """Where the file's data this entry carries begins."""
        return self.part[0] if self.part else 0

    @property
    def length(self) -> int:
        """The file's logical bytes this entry carries (its range's, or all)."""
        return self.part[1] if self.part else self.size

    @property
    def end(self) -> int:
        return self.start + self.length

    @property
    def counted_files(self) -> int:
        """What it adds to the files a stream counts: a file counts once, with the range that begins it."""
        return int(self.start == 0)

    def encode(self) -> bytes:
        """The ENTRY payload."""
        return (
            _ENTRY.pack(self.kind, self.mode, self.mtime_ns, self.size, self.uid, self.gid,
                        len(self.path), len(self.target), len(self.user), len(self.group))
            + self.path + self.target + self.user + self.group + (_PART.pack(*self.part) if self.part else b"")
        )


def parse_entry(payload: bytes) -> Entry:
    if len(payload) < _ENTRY.size:
        raise ProtocolError("malformed entry frame")
    kind, mode, mtime_ns, size, uid, gid, n_path, n_target, n_user, n_group = _ENTRY.unpack_from(payload)
    names = _ENTRY.size + n_path + n_target + n_user + n_group
    if len(payload) - names not in ((0, _PART.size) if kind == EntryKind.FILE else (0,)):
        raise ProtocolError("malformed entry frame")
    try:
        entry_kind = EntryKind(kind)
    except ValueError:
        raise ProtocolError(f"unknown entry kind {kind}") from None
    fields = []
    at = _ENTRY.size
    for n in (n_path, n_target, n_user, n_group):
        fields.append(payload[at:at + n])
        at += n
    path, target, user, group = fields
    check_relative_path(path)
    part = _PART.unpack_from(payload, names) if len(payload) > names else None
    if part is not None and not (part[1] and part[0] + part[1] <= size):
        raise ProtocolError(f"range [{part[0]}, {part[0] + part[1]}) outside {os.fsdecode(path)!r} ({size} bytes)")
    return Entry(entry_kind, path, mode & 0o7777, mtime_ns, size, uid, gid, user, group, target, part)


def check_relative_path(path: bytes) -> None:
    """Refuse any path that could leave the staging directory."""
    parts = path.split(b"/")
    if not path or b"\0" in path or any(part in (b"", b".", b"..") for part in parts):
        raise ProtocolError(f"unsafe path {path!r} in the stream")
