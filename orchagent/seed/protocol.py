"""The wire format of the built-in seed transfer: frames, handshake, tree entries, authentication.

Pure code (no I/O, no reactor), shared by the sender and the receiver so both sides agree by
construction and the format can be tested in isolation.

Every frame is ``kind (1 byte) | payload length (4 bytes, big endian) | payload``.

Handshake (version 2; version 1 agents and version 2 agents refuse each other, naming both
versions, because they would not verify each other's data)::

    receiver -> HELLO   magic, version, 32-byte receiver nonce      (nothing about what is armed)
    sender   -> AUTH    seed id, 32-byte sender nonce, HMAC(K, "sender proof")
    receiver -> ACCEPT  HMAC(K, "receiver proof")                   or REFUSE reason, close

Both sides derive the session key ``K`` (:class:`Session`) as HMAC-SHA256 keyed with
``SeedTransferSecret`` over a label, the seed id, both nonces and, over TLS, 32 bytes of keying
material exported from the TLS session (RFC 5705).  So ``K`` is secret when either the secret
or the TLS session is: with certificates alone (``SeedTransferValidOUs``, the secret empty) the
TLS session carries it; with both, both must be known.  The TLS part also binds the proofs to
the one TLS session, so a relay that terminates TLS on both sides cannot pass them on.  Every
refusal before authentication carries the same reason (:data:`NOT_AUTHENTICATED`), so a peer
without the secret cannot tell an armed seed id from another.

Then the sender streams the tree and the receiver only sends PROGRESS keepalives::

    TOTALS files, bytes             (any time; from a quick stat walk)
    ENTRY  dir | symlink | file     (a directory always comes before what it contains)
    DATA   offset, bytes            (file data; holes of sparse files are simply not sent)
    FILE_END tag                    (after each file's DATA frames)
    END    files, bytes, tag        (the counts the receiver must have seen)
    receiver -> DONE  HMAC(K, "done proof")  (everything authenticated, fsynced and in place)
                or FAIL reason

The stream is authenticated, not only checksummed: one running HMAC-SHA256 (:class:`StreamMac`,
keyed with a key derived from ``K``) covers every byte of every stream frame in order, headers
included, except the tags themselves.  FILE_END carries the MAC of the stream up to it, so a
file whose data, offsets, holes, size, name, mode, owner or times were altered fails before it
takes its name; END carries the MAC of the whole stream, so directories, symlinks and dropped,
replayed or reordered frames are caught before anything moves into the datadir.  A man in the
middle without ``K`` can make a seed fail, never succeed with other data, nor make the sender
believe the receiver finished (DONE carries a proof too); PROGRESS and FAIL are not
authenticated, as they can only keep a connection alive or end it.  HMAC-SHA256 costs what
plain SHA-256 cost (with SHA-NI it is twice as fast as keyed BLAKE2b; ``bench/digest.py``),
and about a microsecond more per file.  Either side may send FAIL with a reason at any frame
boundary.
"""

from __future__ import annotations

import enum
import hmac
import os
import struct
from typing import Iterator, Protocol

import attrs

from orchagent.errors import AgentError

MAGIC = b"ORCHSEED"
VERSION = 2
NONCE_BYTES = 32
TAG_BYTES = 32  # HMAC-SHA256: the handshake's proofs and the stream's tags
TLS_EXPORTER_LABEL = b"EXPERIMENTAL-orchagent-seed-v2"  # RFC 5705: unregistered labels start so
TLS_EXPORTER_BYTES = 32
NOT_AUTHENTICATED = ("the sender was not authenticated: the agents' SeedTransferSecret values differ, or "
                     "its certificate does not pass SeedTransferValidOUs; the target agent's log says which")
MAX_SEED_ID_BYTES = 64
MAX_META_PAYLOAD = 64 * 1024  # every frame but DATA is small; a bigger one is garbage
MAX_DATA_PAYLOAD = 64 * 1024 * 1024

HEADER = struct.Struct("!BI")
DATA_OFFSET = struct.Struct("!Q")
_DATA_START = HEADER.size + DATA_OFFSET.size  # where a DATA frame's file bytes begin
_HELLO = struct.Struct("!8sH32s")
_COUNTS = struct.Struct("!QQ")  # files, bytes
_ENTRY = struct.Struct("!BIqQIIHHBB")  # kind mode mtime_ns size uid gid len(path) len(target) len(user) len(group)


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


def counts_frame(kind: Kind, files: int, nbytes: int) -> bytes:
    return frame(kind, _COUNTS.pack(files, nbytes))


def parse_counts(payload: bytes) -> tuple[int, int]:
    if len(payload) != _COUNTS.size:
        raise ProtocolError("malformed counts frame")
    return _COUNTS.unpack(payload)


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
            yield _kind(kind), payload

    def leftover(self) -> bytes:
        """Bytes received after the last whole frame (the start of the data stream)."""
        rest, self._buffer = bytes(self._buffer), bytearray()
        return rest


def _kind(value: int) -> Kind:
    try:
        return Kind(value)
    except ValueError:
        raise ProtocolError(f"unknown frame kind {value}") from None


# --- handshake -------------------------------------------------------------------------------


def new_nonce() -> bytes:
    return os.urandom(NONCE_BYTES)


def hello(nonce: bytes) -> bytes:
    return frame(Kind.HELLO, _HELLO.pack(MAGIC, VERSION, nonce))


def parse_hello(payload: bytes) -> bytes:
    """The receiver's nonce, after checking this is our protocol in our version."""
    if len(payload) != _HELLO.size:
        raise ProtocolError("the peer is not an orchagent seed receiver")
    magic, version, nonce = _HELLO.unpack(payload)
    if magic != MAGIC:
        raise ProtocolError("the peer is not an orchagent seed receiver")
    if version != VERSION:
        raise ProtocolError(f"the receiver speaks seed protocol version {version}, this agent {VERSION}: "
                            "upgrade both agents to the same orchagent release")
    return nonce


def _check_seed_id(seed_id: str) -> bytes:
    seed = seed_id.encode()
    if not seed or len(seed) > MAX_SEED_ID_BYTES:
        raise ValueError(f"seed id must be 1 to {MAX_SEED_ID_BYTES} bytes")
    return seed


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, "sha256")


@attrs.frozen
class Session:
    """One handshake's key ``K`` (module docstring) and what is derived from it."""

    seed_id: str
    sender_nonce: bytes
    key: bytes = attrs.field(repr=False)

    @classmethod
    def derive(cls, secret: bytes, seed_id: str, receiver_nonce: bytes, sender_nonce: bytes,
               tls_material: bytes = b"") -> Session:
        """``tls_material``: :data:`TLS_EXPORTER_BYTES` exported from the TLS session, empty on plain TCP."""
        seed = _check_seed_id(seed_id)
        message = (b"orchagent seed v2 session\0" + bytes([len(seed)]) + seed + receiver_nonce + sender_nonce
                   + tls_material)
        return cls(seed_id, sender_nonce, _hmac(secret, message))

    def proof(self, role: bytes) -> bytes:
        """What ``role`` (b"sender", b"receiver" or b"done") sends to prove it holds the key."""
        return _hmac(self.key, role + b" proof")

    def proves(self, role: bytes, proof: bytes) -> bool:
        return hmac.compare_digest(self.proof(role), proof)

    def stream_mac(self) -> StreamMac:
        """A fresh MAC for this session's data stream (the sender and the receiver each make one)."""
        return StreamMac(_hmac(self.key, b"stream key"))


def auth(session: Session) -> bytes:
    seed = session.seed_id.encode()
    return frame(Kind.AUTH, bytes([len(seed)]) + seed + session.sender_nonce + session.proof(b"sender"))


@attrs.frozen
class Auth:
    seed_id: str
    sender_nonce: bytes
    proof: bytes

    def valid(self, session: Session) -> bool:
        return session.proves(b"sender", self.proof)


def parse_auth(payload: bytes) -> Auth:
    if (not payload or len(payload) != 1 + payload[0] + NONCE_BYTES + TAG_BYTES
            or not 0 < payload[0] <= MAX_SEED_ID_BYTES):
        raise ProtocolError("malformed authentication frame")
    end = 1 + payload[0]
    try:
        seed_id = payload[1:end].decode()
    except UnicodeDecodeError:
        raise ProtocolError("malformed seed id") from None
    return Auth(seed_id, payload[end:end + NONCE_BYTES], payload[end + NONCE_BYTES:])


def accept(session: Session) -> bytes:
    return frame(Kind.ACCEPT, session.proof(b"receiver"))


def done(session: Session) -> bytes:
    return frame(Kind.DONE, session.proof(b"done"))


class StreamMac:
    """The running MAC over the data stream (module docstring); one thread uses it.

    The sender feeds it every frame it makes and builds the tagged frames with it; the
    receiver's decoder feeds it what arrived and checks the tags.
    """

    def __init__(self, key: bytes) -> None:
        self._mac = hmac.new(key, digestmod="sha256")  # OpenSSL's HMAC: releases the GIL on large updates
        self.update = self._mac.update

    def tag(self) -> bytes:
        """The MAC of the stream so far (the stream goes on)."""
        return self._mac.copy().digest()

    def file_end(self) -> bytes:
        header = HEADER.pack(Kind.FILE_END, TAG_BYTES)
        self.update(header)
        return header + self.tag()

    def end(self, files: int, nbytes: int) -> bytes:
        part = HEADER.pack(Kind.END, _COUNTS.size + TAG_BYTES) + _COUNTS.pack(files, nbytes)
        self.update(part)
        return part + self.tag()


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

    def encode(self) -> bytes:
        """The ENTRY payload."""
        return (
            _ENTRY.pack(self.kind, self.mode, self.mtime_ns, self.size, self.uid, self.gid,
                        len(self.path), len(self.target), len(self.user), len(self.group))
            + self.path + self.target + self.user + self.group
        )


def parse_entry(payload: bytes) -> Entry:
    if len(payload) < _ENTRY.size:
        raise ProtocolError("malformed entry frame")
    kind, mode, mtime_ns, size, uid, gid, n_path, n_target, n_user, n_group = _ENTRY.unpack_from(payload)
    if len(payload) != _ENTRY.size + n_path + n_target + n_user + n_group:
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
    return Entry(entry_kind, path, mode & 0o7777, mtime_ns, size, uid, gid, user, group, target)


def check_relative_path(path: bytes) -> None:
    """Refuse any path that could leave the staging directory."""
    parts = path.split(b"/")
    if not path or b"\0" in path or any(part in (b"", b".", b"..") for part in parts):
        raise ProtocolError(f"unsafe path {path!r} in the stream")


# --- the receiving side's stream decoder -----------------------------------------------------


class StreamHandler(Protocol):
    """What :class:`StreamDecoder` calls, in stream order."""

    def totals(self, files: int, nbytes: int) -> None: ...

    def entry(self, entry: Entry) -> None: ...

    def data(self, offset: int, piece: memoryview) -> None: ...

    def file_end(self) -> None: ...

    def end(self, files: int, nbytes: int) -> None: ...


class StreamDecoder:
    """Turns the sender's byte stream (any chunking) into handler calls, authenticating it.

    Every file is checked at its FILE_END, before the handler hears of it, and the whole stream
    at END.  DATA payloads are handed on as slices of the received chunks, never copied or
    reassembled, so decoding costs one MAC update per piece.  A frame that lies whole in the chunk (nearly
    all of them) is parsed in place; only one cut by a chunk boundary is collected byte-wise.
    """

    def __init__(self, handler: StreamHandler, mac: StreamMac) -> None:
        self._handler = handler
        self._mac = mac
        self._pending = bytearray()  # an incomplete header or small frame
        self._data_left = 0  # bytes of the current DATA payload still to come
        self._data_at = 0  # file offset of the next data byte
        self._file: Entry | None = None
        self.ended = False

    def feed(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        at, size = 0, len(view)
        while at < size:
            if self._data_left:
                take = min(self._data_left, size - at)
                piece = view[at:at + take]
                self._mac.update(piece)
                self._handler.data(self._data_at, piece)
                self._data_at += take
                self._data_left -= take
                at += take
            elif not self._pending and size - at >= _DATA_START:
                at = self._take_whole_frame(view, at)
            else:
                at = self._take_frame(view, at)

    def _take_whole_frame(self, view: memoryview, at: int) -> int:
        """The fast path of :meth:`_take_frame`: the header, and a small payload, are all in ``view``."""
        kind, length = HEADER.unpack_from(view, at)
        if kind == Kind.DATA:
            if not DATA_OFFSET.size <= length <= MAX_DATA_PAYLOAD:
                raise ProtocolError(f"bad frame length {length} for frame kind {kind}")
            self._start_data(bytes(view[at:at + _DATA_START]), length - DATA_OFFSET.size)
            return at + _DATA_START
        end = at + HEADER.size + length
        if end > len(view):
            return self._take_frame(view, at)
        if length > MAX_META_PAYLOAD:
            raise ProtocolError(f"bad frame length {length} for frame kind {kind}")
        self._dispatch(_kind(kind), bytes(view[at + HEADER.size:end]))
        return end

    def _take_frame(self, view: memoryview, at: int) -> int:
        """Consume the header (and small payload) of one frame; return the new position."""
        pending = self._pending
        need = HEADER.size
        if len(pending) >= HEADER.size:
            kind, length = HEADER.unpack_from(pending)
            need += DATA_OFFSET.size if kind == Kind.DATA else length
        take = min(need - len(pending), len(view) - at)
        pending += view[at:at + take]
        at += take
        if len(pending) == HEADER.size:
            kind, length = HEADER.unpack_from(pending)
            limit = MAX_DATA_PAYLOAD if kind == Kind.DATA else MAX_META_PAYLOAD
            if length > limit or (kind == Kind.DATA and length < DATA_OFFSET.size):
                raise ProtocolError(f"bad frame length {length} for frame kind {kind}")
            if kind != Kind.DATA and length == 0:
                self._dispatch(_kind(kind), b"")
                pending.clear()
            return at
        if len(pending) < HEADER.size:
            return at
        kind, length = HEADER.unpack_from(pending)
        if kind == Kind.DATA and len(pending) == HEADER.size + DATA_OFFSET.size:
            self._start_data(bytes(pending), length - DATA_OFFSET.size)
            pending.clear()
        elif kind != Kind.DATA and len(pending) == HEADER.size + length:
            self._dispatch(_kind(kind), bytes(pending[HEADER.size:]))
            pending.clear()
        return at

    def _start_data(self, header: bytes, length: int) -> None:
        """``header``: the DATA frame's header and offset; ``length`` file bytes follow."""
        if self._file is None:
            raise ProtocolError("file data outside a file")
        (offset,) = DATA_OFFSET.unpack_from(header, HEADER.size)
        if offset + length > self._file.size:
            raise ProtocolError(f"data beyond the end of {self._file.path!r}")
        self._mac.update(header)
        self._data_at, self._data_left = offset, length

    def _dispatch(self, kind: Kind, payload: bytes) -> None:
        if self.ended:
            raise ProtocolError("frames after the end of the stream")
        if kind == Kind.FAIL:
            raise TransferFailed(f"the sender failed: {payload.decode('utf-8', 'replace')}")
        if kind in (Kind.FILE_END, Kind.END):
            self._check_tag(kind, payload)
        else:
            self._mac.update(HEADER.pack(kind, len(payload)) + payload)
        if kind == Kind.ENTRY:
            if self._file is not None:
                raise ProtocolError(f"entry inside file {self._file.path!r}")
            entry = parse_entry(payload)
            if entry.kind == EntryKind.FILE:
                self._file = entry
            self._handler.entry(entry)
        elif kind == Kind.FILE_END:
            self._file = None
            self._handler.file_end()
        elif kind == Kind.TOTALS:
            self._handler.totals(*parse_counts(payload))
        elif kind == Kind.END:
            self.ended = True
            self._handler.end(*parse_counts(payload[:_COUNTS.size]))
        else:
            raise ProtocolError(f"unexpected {kind.name} frame in the data stream")

    def _check_tag(self, kind: Kind, payload: bytes) -> None:
        """FILE_END and END: the tag at the payload's end must be the MAC of the stream up to it."""
        if kind == Kind.FILE_END and self._file is None:
            raise ProtocolError("file end outside a file")
        if kind == Kind.END and self._file is not None:
            raise ProtocolError(f"stream ended inside file {self._file.path!r}")
        if len(payload) != (TAG_BYTES if kind == Kind.FILE_END else _COUNTS.size + TAG_BYTES):
            raise ProtocolError(f"malformed {kind.name} frame")
        self._mac.update(HEADER.pack(kind, len(payload)) + payload[:-TAG_BYTES])
        if hmac.compare_digest(self._mac.tag(), payload[-TAG_BYTES:]):
            return
        if kind == Kind.FILE_END:
            raise ChecksumMismatch(f"{os.fsdecode(self._file.path)!r} is not authentic: its data or metadata "
                                   "changed in transit (corrupted, or altered on the network path)")
        raise ChecksumMismatch("the seed stream is not authentic: its directories, symlinks or frames "
                               "changed in transit (corrupted, or altered on the network path)")
