"""Several connections ("lanes") of one seed (``SeedParallelStreams``), on both sides.

Each lane is a transfer of its own as :mod:`orchagent.seed.sender` and
:mod:`orchagent.seed.receive` make it, with its own handshake (which names the lane and the
lane count, :mod:`orchagent.seed.authentication`), stream MAC, resume point and reconnections;
what makes them one seed is here:

* :class:`Plan`: which lane carries each file, range of a large file and symlink, decided once from
  one walk of the source (:func:`split`).  A large file goes in ranges, each an entry of its own on
  its lane, put together by the receiver (:mod:`orchagent.seed.ranges`).  Every lane also
  sends every directory entry (a few bytes each): a file's directory then exists before it on
  whichever lane the file travels, with no lane waiting for another, and a resumed lane replays
  its own stream alone.  The receiver makes a directory that another lane made already as a no-op.
* :class:`SharedStaging`: the receiver's one staging directory, made by the first lane to start,
  and made durable and moved into the datadir once, by the last lane to finish, with the files
  received in ranges and every lane's directory modes and times completed then; the other lanes
  wait for that before they confirm (DONE), so a sender hears DONE only once the whole tree is in place.
* :class:`SendLanes` and :class:`ReceiveLanes`: the lanes as one transfer: progress summed, one
  throttle (shared by the sending lanes), one abort, and one outcome, which succeeds only when
  every lane succeeded and fails with the first lane that failed (the others are stopped).
"""

from __future__ import annotations

import heapq
import os
import threading
from typing import Any, Callable, Iterable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from orchagent.seed.durability import syncfs
from orchagent.seed.outcome import Outcome, Progress, TransferAborted
from orchagent.seed.pipe import Closed
from orchagent.seed.protocol import Part, TransferFailed
from orchagent.seed.ranges import RANGES_PER_LANE, RangedFiles
from orchagent.seed.reader import CHUNK_BYTES, tree_files
from orchagent.seed.staging import PERMISSION_BITS, Staging
from orchagent.seed.transfer import Transfer

# SeedParallelStreams 0: what the agent chooses.  One: on the 2-core test machine at 1 Gbit/s more
# streams did not pay reliably, and with the compression pool they are 5 to 9% slower (bench/RESULTS.md,
# "Parallel streams").
AUTO_LANES = 1
_SUMMED = ("bytes_done", "files_done", "wire_bytes", "data_bytes", "resumes", "resent_bytes")
MIN_RANGE_BYTES = 8 * 1024 * 1024  # a range is a fraction of a lane's share (RANGES_PER_LANE), but not smaller: a range spans a few CHECKPOINTs (resume points)


def lane_count(configured: int, hot: bool = False) -> int:
    """The lanes a seed uses: ``SeedParallelStreams`` (0: the agent's choice); a hot seed's one
    backup stream has one."""
    return 1 if hot else configured or AUTO_LANES


def range_bytes(total: int, lanes: int) -> int:
    """The size of the ranges a seed of ``total`` bytes over ``lanes`` cuts its large files into, and
    of the largest file it sends whole: a quarter of a lane's share, in whole reader blocks, at least
    :data:`MIN_RANGE_BYTES`.  No piece is then larger, so the lanes end within one range's size of each
    other however the bytes sit (one huge table or many small ones), and at most four files per lane
    are cut: files that small balance anyway."""
    share = -(-total // (lanes * RANGES_PER_LANE))
    return max(MIN_RANGE_BYTES, -(-share // CHUNK_BYTES) * CHUNK_BYTES)


def split(files: Iterable[tuple[bytes, int]], lanes: int) -> dict[bytes, list[tuple[Part | None, int]]]:
    """What each lane carries of each (path, size): a path's pieces as (range, lane), ranges in
    offset order (range None: the whole file or symlink).  Files larger than :func:`range_bytes` (with
    several lanes) go in ranges of that size; the pieces, largest first, each to the lane with the
    fewest bytes so far (then the fewest pieces, then the lowest number), so the lanes carry about as
    many bytes (they differ by at most one range) and the same tree always splits the same way."""
    files = list(files)
    cut = range_bytes(sum(max(size, 0) for _, size in files), lanes) if lanes > 1 else None
    pieces: list[tuple[int, bytes, Part | None]] = []
    for path, size in files:
        if cut is None or size <= cut:
            pieces.append((max(size, 0), path, None))
        else:
            for offset in range(0, size, cut):
                length = min(cut, size - offset)
                pieces.append((length, path, (offset, length)))
    loads = [(0, 0, lane) for lane in range(lanes)]
    assignment: dict[bytes, list[tuple[Part | None, int]]] = {}
    for length, path, part in sorted(pieces, key=lambda piece: (-piece[0], piece[1], piece[2] or (0, 0))):
        nbytes, entries, lane = heapq.heappop(loads)
        assignment.setdefault(path, []).append((part, lane))
        heapq.heappush(loads, (nbytes + length, entries + 1, lane))
    for carried in assignment.values():
        carried.sort(key=lambda piece: piece[0] or (0, 0))
    return assignment


class Plan:
    """A sending seed's split of its source over ``lanes`` (made by the first lane's reader thread
    to need it, once: a lane that reconnects keeps its files).  An entry that appeared after the
    split goes whole on lane 0."""

    def __init__(self, root: str, lanes: int) -> None:
        self._root = root
        self.lanes = lanes
        self._lock = threading.Lock()
        self._assignment: dict[bytes, list[tuple[Part | None, int]]] | None = None

    def carries(self, lane: int) -> Callable[[bytes], tuple[Part | None, ...]]:
        """Reader threads: what ``lane`` sends of the file or symlink at a relative path: the whole
        (:data:`~orchagent.seed.reader.WHOLE`), nothing, or ranges of it."""
        return lambda relative: tuple(part for part, on in self._pieces(relative) if on == lane)

    def _pieces(self, relative: bytes) -> list[tuple[Part | None, int]]:
        with self._lock:
            if self._assignment is None:
                self._assignment = split(tree_files(self._root), self.lanes)
        return self._assignment.get(relative, [(None, 0)])


class SharedStaging:
    """The staging directory of one receive, for all its lanes' writers (their worker threads)."""

    def __init__(self, datadir: str, seed_id: str) -> None:
        self.staging = Staging(datadir, seed_id)
        self.ranged = RangedFiles()  # large files, each received over several lanes
        self.lanes = 1  # known from the first lane's handshake (ReceiveLanes)
        self._lock = threading.Condition()
        self._made = False
        self._users = 0  # writers started and not yet discarded
        self._finished: list[dict[bytes, tuple[int, int]]] = []  # each finished lane's directories
        self._outcome: str | None = None  # "moved", "failed" or "cancelled"

    @property
    def shared(self) -> bool:
        """Other lanes write into the same tree (directories may exist already; none is removed)."""
        return self.lanes > 1

    def start(self) -> None:
        """A lane's writer starts: the first makes the staging directory."""
        with self._lock:
            if self._outcome is not None:
                raise Closed()  # the receive failed meanwhile: make nothing it would have to remove
            if not self._made:
                try:
                    self.staging.create()
                except BaseException:
                    self.staging.close()
                    raise
                self._made = True
            self._users += 1

    def finish(self, directories: dict[bytes, tuple[int, int]], move_in: Callable[[dict], None]) -> None:
        """A lane received its part whole: the last to do so calls ``move_in`` with every lane's
        directories; the others wait for it.  Raises if it failed or the receive was stopped."""
        with self._lock:
            self._finished.append(directories)
            last = len(self._finished) == self.lanes
            while not last and self._outcome is None:
                self._lock.wait()
            if not last:
                if self._outcome != "moved":
                    raise TransferFailed(f"seed {self.staging.name}: another stream of the seed failed")
                return
            merged = {path: meta for part in self._finished for path, meta in part.items()}
        try:
            move_in(merged)
        except BaseException:
            self._end("failed")
            raise
        self._end("moved")

    def move_in(self, directories: dict[bytes, tuple[int, int]], cancelled: Callable[[], bool]) -> None:
        """Once per seed, after every lane's part arrived: the files received in ranges, directory modes
        and times, durability, the move into the datadir (``cancelled`` is asked just before it: an
        aborted receive never fills it)."""
        staging = self.staging
        self.ranged.seal(staging)
        # Children before parents, so each directory is handed over after everything on its way
        # was opened as the agent's own.
        for relative in sorted(directories, reverse=True):
            if relative:
                mode, mtime_ns = directories[relative]
                fd = staging.open_tree_directory(relative)
                try:
                    if os.geteuid() == 0:
                        os.fchown(fd, *staging.owner)
                    os.fchmod(fd, mode & PERMISSION_BITS)
                    os.utime(fd, ns=(mtime_ns, mtime_ns))
                finally:
                    os.close(fd)
        syncfs(staging.fd)
        if cancelled():
            raise Closed()
        staging.move_into_datadir()

    def cancel(self) -> None:
        """Reactor: the receive failed or was aborted; wake the lanes waiting in :meth:`finish`."""
        self._end("cancelled")

    def discard(self) -> None:
        """A lane's writer stopped after a failure: the last one removes the staging directory."""
        with self._lock:
            self._users -= 1
            if self._outcome is None:
                self._outcome = "cancelled"
                self._lock.notify_all()
            if self._users:
                return
        self.ranged.close()
        self.staging.remove()

    def _end(self, outcome: str) -> None:
        with self._lock:
            if self._outcome is None:
                self._outcome = outcome
            self._lock.notify_all()


class _Lanes(Outcome):
    """What both sides' lane sets share: the members seen as one :class:`Transfer`."""

    def __init__(self, seed_id: str, role: str) -> None:
        self.seed_id = seed_id
        self.role = role
        self.error: TransferFailed | None = None
        self._members: list[Transfer] = []
        self._waiters: list[Deferred] = []
        self._ended = 0

    def _add(self, member: Transfer) -> Transfer:
        self._members.append(member)
        member.when_done().addBoth(self._member_done, member)
        return member

    def _member_done(self, result: Any, member: Transfer) -> None:
        self._ended += 1
        if isinstance(result, Failure) and self.error is None:
            self.error = member.error
            for other in self._members:
                if other is not member:
                    other.conclude(member.error)  # the first lane to fail fails them all
        self._fire_if_done()

    def _fire_if_done(self) -> None:
        if self.done:
            self._fire_waiters()

    @property
    def lanes(self) -> int:
        return len(self._members)

    @property
    def done(self) -> bool:
        return bool(self._members) and self._ended == len(self._members)

    @property
    def succeeded(self) -> bool:
        return self.done and self.error is None

    @property
    def concluded(self) -> bool:
        return self.error is not None or any(member.concluded for member in self._members)

    @property
    def state(self) -> str:
        if self.done:
            return ("succeeded" if self.error is None else
                    "aborted" if isinstance(self.error, TransferAborted) else "failed")
        states = {member.state for member in self._members if not member.done}
        for state in ("reconnecting", "waiting", "running"):
            if state in states:
                return state
        return "finishing"

    @property
    def progress(self) -> Progress:
        """The lanes' progress summed (a fresh copy each time; a single lane's own, live)."""
        parts = [member.progress for member in self._members]
        if len(parts) == 1:
            return parts[0]
        total = Progress(**{name: sum(getattr(part, name) for part in parts) for name in _SUMMED})
        if all(part.files_total is not None for part in parts):
            total.files_total = sum(part.files_total for part in parts)
            total.bytes_total = sum(part.bytes_total for part in parts)
        started = [part.started for part in parts if part.started is not None]
        total.started = min(started, default=None)
        if self.done:
            total.finished = max(part.finished for part in parts if part.finished is not None)
        return total

    def abort(self) -> Deferred:
        """Stop every lane; fires once nothing of any lane runs any more."""
        for member in list(self._members):
            member.abort()
        d = self.when_done()
        d.addErrback(lambda _: None)
        return d

    def conclude(self, error: TransferFailed | None) -> None:
        for member in list(self._members):
            member.conclude(error)


class SendLanes(_Lanes):
    """A seed sent over ``lanes`` connections; ``start_lane(lane)`` starts the transfer of one."""

    def __init__(self, seed_id: str, source_dir: str, lanes: int, start_lane: Callable[[int], Any]) -> None:
        super().__init__(seed_id, "send")
        self.source_dir = source_dir
        for lane in range(lanes):
            self._add(start_lane(lane))

    @property
    def max_bytes_per_second(self) -> int:
        return self._members[0].max_bytes_per_second

    def limit_rate(self, max_bytes_per_second: int) -> None:
        """Reactor: pace the lanes together (they share one throttle) at ``max_bytes_per_second``."""
        for member in self._members:
            member.limit_rate(max_bytes_per_second)


class ReceiveLanes(_Lanes):
    """One armed receive: ``first`` waits for the seed's first lane; the first sender to authenticate
    says how many lanes there are, and ``make_lane()`` makes the others' receives then."""

    def __init__(self, seed_id: str, datadir: str, shared: SharedStaging, first: Transfer,
                 make_lane: Callable[[], Transfer]) -> None:
        super().__init__(seed_id, "receive")
        self.datadir = datadir
        self._shared = shared
        self._make_lane = make_lane
        self._by_lane: dict[int, Transfer] = {}
        self._add(first)

    @property
    def last_refusal(self) -> str | None:
        return self._members[0].last_refusal

    @last_refusal.setter
    def last_refusal(self, reason: str) -> None:
        for member in self._members:
            member.last_refusal = reason

    def lane(self, lane: int, lanes: int) -> Transfer | str:
        """The receive of ``lane`` (of ``lanes``, which every lane must agree on), or why there is none."""
        if not self._by_lane:
            self._shared.lanes = lanes
            self._by_lane[lane] = self._members[0]
            for other in range(lanes):
                if other != lane:
                    self._by_lane[other] = self._add(self._make_lane())
        elif lanes != len(self._by_lane):
            return (f"the sender names {lanes} streams for seed {self.seed_id}, whose first stream named "
                    f"{len(self._by_lane)}")
        return self._by_lane[lane]

    def _member_done(self, result: Any, member: Transfer) -> None:
        if isinstance(result, Failure):
            self._shared.cancel()
        super()._member_done(result, member)

