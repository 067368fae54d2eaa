"""Resuming a seed after a dropped connection: where the receiver stands, and how both sides find it.

A seed outlives its connections.  Each (re)connection is a fresh handshake (new nonces, new key,
new stream MAC); right after ACCEPT the receiver sends ``RESUME``, signed with that connection's
key, saying how much of the sender's walk it verified on the connections before (nothing, on the
first).  "Verified" means covered by a tag the receiver checked: a FILE_END, or a CHECKPOINT that
the sender puts into a large file every :data:`CHECKPOINT_BYTES`.  Everything decoded after the
last such tag is undone on a drop (:class:`Verified` keeps the list), so unverified bytes never
count, and the new connection's stream starts right after the verified part: with the file in
progress, whose ENTRY is sent again (it must be the same) and its data from the verified offset.

Per transfer (outlives connections): :class:`Verified`, the receiver's writer and staging.
Per connection: the session, the stream MAC and the decoder.
"""

from __future__ import annotations

import stat
import struct
from typing import Iterator

import attrs

from orchagent.seed import authentication
from orchagent.seed.protocol import Entry, EntryKind, Kind, ProtocolError, TransferFailed, frame

CHECKPOINT_BYTES = 2 * 1024 * 1024  # of a file's data between two CHECKPOINTs: at most this is sent again
RECONNECT_DELAYS = (0.25, 0.5, 1.0, 2.0, 4.0)  # the sender's back-off between attempts (then the last, again)
RECEIVED_KEPT = 64  # seeds a receiver remembers having received whole (:class:`Received`)
_POINT = struct.Struct("!QQQQBH")  # entries, files, file bytes, offset, in a file, len(last path)
_LABEL = b"orchagent seed resume"
WalkItem = tuple  # an entry of the sender's walk: (relative path, path, lstat, the range of a file or None)


@attrs.frozen
class ResumePoint:
    """How far the receiver verified the sender's walk (entries counted in the walk's order)."""

    entries: int = 0  # entries (directories, symlinks, files) whose ENTRY frame is verified
    files: int = 0  # of them, files verified whole
    file_bytes: int = 0  # their logical bytes
    in_file: bool = False  # the last of ``entries`` is a file verified up to ``offset``, not whole
    offset: int = 0  # from the file's start (a range of a file: from the range's)
    last_path: bytes = b""  # the path of the last of ``entries``: the sender checks its walk agrees

    @property
    def nbytes(self) -> int:
        """Logical bytes verified (what the seed's progress may count)."""
        return self.file_bytes + self.offset

    def encode(self) -> bytes:
        return _POINT.pack(self.entries, self.files, self.file_bytes, self.offset, self.in_file,
                           len(self.last_path)) + self.last_path


START = ResumePoint()


def resume_frame(session: authentication.Session, point: ResumePoint) -> bytes:
    body = point.encode()
    return frame(Kind.RESUME, body + session.sign(_LABEL, body))


def parse_resume(session: authentication.Session, payload: bytes) -> ResumePoint:
    """The point a RESUME frame names, if this connection's receiver signed it."""
    body, tag = payload[:-authentication.TAG_BYTES], payload[-authentication.TAG_BYTES:]
    if len(body) < _POINT.size or len(body) != _POINT.size + _POINT.unpack_from(body)[5]:
        raise ProtocolError("malformed resume frame")
    if not session.signed(_LABEL, body, tag):
        raise ProtocolError("the receiver's resume frame is not authentic: something between the agents "
                            "altered the connection")
    entries, files, file_bytes, offset, in_file, _ = _POINT.unpack_from(body)
    if in_file > 1 or (not in_file and offset) or (in_file and not entries) or files > entries:
        raise ProtocolError("malformed resume frame")
    return ResumePoint(entries, files, file_bytes, bool(in_file), offset, body[_POINT.size:])


class Received:
    """Seeds a receiver ended lately, and how, so a sender whose connection dropped before the
    receiver's DONE or FAIL reached it hears that outcome on reconnecting rather than that nothing
    is armed: DONE again for a seed received whole, the reason for one that failed here.

    Bounded: the last :data:`RECEIVED_KEPT` seeds, each for ``seconds`` (the sender's reconnect window).
    """

    def __init__(self, clock, seconds: float) -> None:
        self._clock = clock
        self._seconds = seconds
        self._ended: dict[str, tuple[float, str | None]] = {}  # seed id -> (kept until, why it failed)

    def add(self, seed_id: str, failure: str | None = None) -> None:
        """``seed_id`` ended: received whole, or failed for ``failure``."""
        self._ended.pop(seed_id, None)
        self._ended[seed_id] = (self._clock.seconds() + self._seconds, failure)
        while len(self._ended) > RECEIVED_KEPT:
            del self._ended[next(iter(self._ended))]

    def forget(self, seed_id: str) -> None:
        """``seed_id`` is armed anew: its senders are the new receive's."""
        self._ended.pop(seed_id, None)

    def __contains__(self, seed_id: str) -> bool:
        """``seed_id`` was received whole lately."""
        until, failure = self._ended.get(seed_id, (0, None))
        return until > self._clock.seconds() and failure is None

    def failure(self, seed_id: str) -> str | None:
        """Why ``seed_id`` failed here lately (None: it did not, or not lately)."""
        until, failure = self._ended.get(seed_id, (0, None))
        return failure if until > self._clock.seconds() else None


def silence_limit(stall_timeout: float) -> float:
    """How long a resumable seed's connection may carry nothing before the side that notices drops it
    and resumes over a new one (a black-holed route or a frozen middlebox never closes it).

    Half of ``SeedStallTimeoutSeconds``: twice the longest pause the throttle makes between batches
    (a quarter, :func:`~orchagent.seed.throttle.minimum_rate`) and twice the receiver's keepalive
    period (a quarter, at most 10 s), so neither is taken for a stall; the other half is left for
    reconnecting, so a link that stays dead still fails the seed ``SeedStallTimeoutSeconds`` after
    it stopped moving.
    """
    return stall_timeout / 2


def reconnect_delay(attempt: int) -> float:
    """Seconds before reconnection attempt ``attempt`` (0, 1, ...)."""
    return RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)]


class Verified:
    """The receiver's account of what it verified, across a seed's connections (one per transfer).

    The decoding thread tells it each entry as it is decoded (it is applied to the staging tree
    at once, but not yet verified) and each tag that matched; on a drop, :meth:`tail` is what
    to undo, and :attr:`point` where the next connection starts.
    """

    def __init__(self) -> None:
        self.point = START
        self.file: Entry | None = None  # the file verified up to point.offset, when point.in_file
        self.tail: list[Entry] = []  # decoded after the last tag matched: applied, unverified

    def entry(self, entry: Entry) -> None:
        self.tail.append(entry)

    def checkpoint(self, offset: int) -> None:
        """A CHECKPOINT matched: the current file's entry and its data below ``offset`` are verified."""
        self.file = self._current()
        self.point = self._committed(in_file=True, offset=offset - self.file.start)

    def file_end(self) -> None:
        """A FILE_END matched: the current file is verified whole."""
        file = self._current()
        self.file = None
        self.point = attrs.evolve(self._committed(in_file=False, offset=0),
                                  files=self.point.files + file.counted_files,
                                  file_bytes=self.point.file_bytes + file.length)

    def dropped(self) -> list[Entry]:
        """The entries to undo (latest first) now the connection dropped; the tail starts afresh."""
        tail, self.tail = self.tail, []
        return tail[::-1]

    def _current(self) -> Entry:
        file = self.tail[-1] if self.tail else self.file
        if file is None or file.kind != EntryKind.FILE:
            raise ProtocolError("a file's tag outside a file")
        return file

    def _committed(self, in_file: bool, offset: int) -> ResumePoint:
        tail, self.tail = self.tail, []
        last_path = tail[-1].path if tail else self.point.last_path
        return attrs.evolve(self.point, entries=self.point.entries + len(tail), in_file=in_file, offset=offset,
                            last_path=last_path)


def skip_verified(walk: Iterator[WalkItem], point: ResumePoint) -> Iterator[WalkItem]:
    """The sender's walk without what the receiver verified (the file in progress stays, to continue).

    Only what the stream carries counts as an entry (sockets, fifos and devices are skipped);
    the entry at ``point.entries`` must have ``point.last_path``, or the source changed since the
    seed began and a resume would splice two different trees.
    """
    walk = iter(walk)
    skip = point.entries - (1 if point.in_file else 0)
    seen = last = None
    for seen in range(skip):
        last = _next_entry(walk)
    if point.in_file:
        last = _next_entry(walk)
        _check(last, point)
        yield last
    elif seen is not None:
        _check(last, point)
    yield from walk


def _next_entry(walk: Iterator[WalkItem]) -> WalkItem | None:
    for item in walk:
        mode = item[2].st_mode
        if stat.S_ISDIR(mode) or stat.S_ISLNK(mode) or stat.S_ISREG(mode):
            return item
    return None


def _check(item: WalkItem | None, point: ResumePoint) -> None:
    if item is None or item[0] != point.last_path or (point.in_file and not stat.S_ISREG(item[2].st_mode)):
        raise TransferFailed("cannot resume the seed: the source directory changed since the seed began "
                             f"(entry {point.entries} is no longer {point.last_path.decode('utf-8', 'replace')!r})")
