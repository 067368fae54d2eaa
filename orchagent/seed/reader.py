"""Reading a directory tree into the seed stream (the sender's reader thread; blocking I/O).

Walks without following symlinks, directories before their contents; sockets, fifos and devices
are skipped (a datadir may hold ``mysql.sock``), hard links arrive as separate files, holes of
sparse files are not sent.  Files are opened ahead and dropped from the page cache once read.
Blocks of file data are compressed as :class:`~orchagent.seed.compression.CompressionPolicy` says,
large ones on the compressing threads of :class:`~orchagent.seed.ordered.OrderedPool` while this
thread reads on, and put back in stream order; the MAC covers them uncompressed, in that order.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import grp
import os
import pwd
import stat
from concurrent.futures import Future
from typing import Callable, Iterator

import attrs

from orchagent.seed import authentication, protocol
from orchagent.seed.compression import CompressionPolicy, zdata
from orchagent.seed.ordered import OrderedPool
from orchagent.seed.protocol import Entry, EntryKind, Kind, Part, TransferFailed
from orchagent.seed.resumption import CHECKPOINT_BYTES, START, ResumePoint, WalkItem, skip_verified

CHUNK_BYTES = 1024 * 1024  # one read and one DATA frame
BATCH_BYTES = 256 * 1024  # small frames are packed together up to this size
READ_AHEAD_FILES = 64  # the sender opens files this far ahead and starts reading them
READ_AHEAD_BYTES = 4 * 1024 * 1024  # of each file opened ahead (sequential read-ahead does the rest)
COMPRESSING_THREADS = min(len(os.sched_getaffinity(0)), 4)  # zstd -1 on 4 cores outruns a 10 Gbit/s link
BLOCKS_AHEAD = COMPRESSING_THREADS  # blocks given to them and not yet sent on (1 MB each; one more waits its turn)
WHOLE: tuple[Part | None, ...] = (None,)  # what a lane carries of a file it sends whole (see TreeReader)


@attrs.frozen
class Batch:
    """Frames to write in one go, and the progress they carry."""

    parts: list[bytes]
    data_bytes: int  # logical file bytes completed by these frames (holes included)
    files: int  # files completed by these frames
    totals: tuple[int, int] | None = None  # (files, bytes) of the whole tree, in the first batch
    final: bool = False  # the END frame is in here
    saved: int = 0  # bytes compression took off these frames (their size uncompressed: size + saved)

    @property
    def size(self) -> int:
        return sum(map(len, self.parts))



def _walk(root: bytes) -> Iterator[tuple[bytes, bytes, os.stat_result]]:
    """(relative path, absolute path, lstat) of everything below ``root``, parents first."""
    stack = [b""]
    while stack:
        relative_dir = stack.pop()
        directory = os.path.join(root, relative_dir) if relative_dir else root
        with os.scandir(directory) as entries:
            children = sorted(entries, key=lambda e: e.name)
        for child in children:
            relative = relative_dir + b"/" + child.name if relative_dir else child.name
            st = child.stat(follow_symlinks=False)
            yield relative, child.path, st
            if stat.S_ISDIR(st.st_mode):
                stack.append(relative)


def _opened_ahead(entries: Iterator[WalkItem], depth: int) -> Iterator[tuple[bytes, bytes, os.stat_result,
                                                                             Part | None, int]]:
    """The walk, with each regular file opened ``depth`` entries early and its reading started.

    Reading thousands of small files one after the other waits for the disk once per file;
    ``POSIX_FADV_WILLNEED`` queues the reads of the next files without waiting, so the disk
    works on many at once while this thread hashes and sends.  The consumer owns (and closes)
    the descriptor it is given (-1 for anything but a regular file).
    """
    ahead: collections.deque[tuple[bytes, bytes, os.stat_result, Part | None, int]] = collections.deque()
    try:
        for relative, path, st, part in entries:
            fd = -1
            if stat.S_ISREG(st.st_mode):
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                os.posix_fadvise(fd, part[0] if part else 0, READ_AHEAD_BYTES, os.POSIX_FADV_WILLNEED)
                if st.st_size > READ_AHEAD_BYTES:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            ahead.append((relative, path, st, part, fd))
            if len(ahead) > depth:
                yield ahead.popleft()
        while ahead:
            yield ahead.popleft()
    finally:
        for *_, fd in ahead:
            if fd >= 0:
                os.close(fd)


def count_tree(root: str, carries: Callable[[bytes], tuple[Part | None, ...]] = lambda _: WHOLE,
               ) -> tuple[int, int]:
    """(files, bytes) a transfer of ``root`` (or the lane that ``carries`` them) will carry, counted as
    the stream counts them (:attr:`Entry.counted_files`): the quick walk behind the totals."""
    files = nbytes = 0
    for relative, size in tree_files(root):
        for part in carries(relative) if size >= 0 else ():
            files += part is None or part[0] == 0
            nbytes += size if part is None else part[1]
    return files, nbytes


def tree_files(root: str) -> Iterator[tuple[bytes, int]]:
    """(relative path, size) of the regular files below ``root``, and (path, -1) of its symlinks:
    what a lane of the seed may carry (:mod:`orchagent.seed.lanes`)."""
    for relative, _, st in _walk(os.fsencode(root)):
        if stat.S_ISREG(st.st_mode):
            yield relative, st.st_size
        elif stat.S_ISLNK(st.st_mode):
            yield relative, -1


def _lane_walk(root: bytes, carries: Callable[[bytes], tuple[Part | None, ...]]) -> Iterator[WalkItem]:
    """The walk of one lane: every directory (so its files' parents exist whichever lane makes them
    first), and the files, ranges of files and symlinks it ``carries``, each an entry of its own."""
    for relative, path, st in _walk(root):
        for part in (None,) if stat.S_ISDIR(st.st_mode) else carries(relative):
            yield relative, path, st, part


class TreeReader:
    """Yields the whole stream for one source directory as :class:`Batch` es."""

    def __init__(self, root: str, mac: authentication.StreamMac, chunk_bytes: int = CHUNK_BYTES,
                 batch_bytes: int = BATCH_BYTES, compression: str = "none",
                 waited: Callable[[], float] = lambda: 0.0, resume: ResumePoint = START,
                 carries: Callable[[bytes], tuple[Part | None, ...]] = lambda _: WHOLE, lanes: int = 1) -> None:
        """``compression`` and ``waited``: see :class:`~orchagent.seed.compression.CompressionPolicy`;
        ``resume``: what the receiver verified already (:mod:`orchagent.seed.resumption`);
        ``carries``: what this lane (of ``lanes``, which share the compressing threads) sends of a file
        or symlink: :data:`WHOLE`, nothing, or ranges of a large file (:mod:`orchagent.seed.lanes`)."""
        self._root = os.fsencode(root)
        self._resume = resume
        self._resume_offset = resume.offset  # verified of the first file (the one in progress, if resume.in_file)
        self._carries = carries
        self._mac = mac  # every frame goes through it (orchagent.seed.authentication)
        self._policy = CompressionPolicy(compression, waited)
        threads = max(COMPRESSING_THREADS // lanes, 1)
        self._pool: OrderedPool[Batch] = OrderedPool(threads, BLOCKS_AHEAD * threads // COMPRESSING_THREADS)
        self._chunk = chunk_bytes
        self._batch = batch_bytes
        self._names: dict[tuple[str, int], bytes] = {}
        self._pending: list[bytes] = []
        self._pending_size = self._pending_bytes = self._pending_files = self._pending_saved = 0

    def batches(self) -> Iterator[Batch]:
        """The stream in order; close it to stop early (that also stops the compressing threads)."""
        with contextlib.closing(self._pool.in_order(self._stream())) as batches:
            for batch in batches:
                self._policy.sent(batch.size)
                yield batch

    def _stream(self) -> Iterator[Batch | Future[Batch]]:
        if not os.path.isdir(self._root):
            raise TransferFailed(f"seed source {os.fsdecode(self._root)!r} is not a directory")
        totals = count_tree(os.fsdecode(self._root), self._carries)
        yield Batch([self._authenticated(protocol.counts_frame(Kind.TOTALS, *totals))], 0, 0, totals=totals)
        entries = _opened_ahead(skip_verified(_lane_walk(self._root, self._carries), self._resume), READ_AHEAD_FILES)
        try:
            yield from self._entries(entries)
        finally:
            entries.close()  # closes the files opened ahead when the transfer stops early

    def _entries(self, entries: Iterator[tuple[bytes, bytes, os.stat_result, int]],
                 ) -> Iterator[Batch | Future[Batch]]:
        files, nbytes = self._resume.files, self._resume.file_bytes
        for relative, path, st, part, fd in entries:
            if stat.S_ISDIR(st.st_mode):
                self._add(self._entry_frame(self._entry(EntryKind.DIR, relative, st)))
            elif stat.S_ISLNK(st.st_mode):
                entry = self._entry(EntryKind.SYMLINK, relative, st, target=os.readlink(path))
                self._add(self._entry_frame(entry))
            elif stat.S_ISREG(st.st_mode):
                entry = yield from self._file(relative, path, fd, part)
                files += entry.counted_files
                nbytes += entry.length
            if self._pending_size >= self._batch:
                yield from self._flush()
        yield from self._flush()
        yield Batch([self._mac.end(files, nbytes)], 0, 0, final=True)

    def _file(self, relative: bytes, path: bytes, fd: int, part: Part | None) -> Iterator[Batch | Future[Batch]]:
        """A file, or the range ``part`` of it, as an entry of its own; returns its :class:`Entry`."""
        try:
            st = os.fstat(fd)
            entry = self._entry(EntryKind.FILE, relative, st, part=part)
            if entry.end > st.st_size:
                raise TransferFailed(f"source file {os.fsdecode(path)!r} shrank while it was sent")
            self._add(self._entry_frame(entry))
            sent, self._resume_offset = self._resume_offset, 0  # the receiver has those
            unverified = 0
            for start, end in _extents(fd, st, entry.start + sent, entry.end):
                for offset in range(start, end, self._chunk):
                    data = os.pread(fd, min(self._chunk, end - offset), offset)
                    if not data:
                        raise TransferFailed(f"source file {os.fsdecode(path)!r} shrank while it was sent")
                    # Drop what was read, so a datadir streamed once does not push out what the source's
                    # MySQL has cached; from the file's (range's) start, as the kernel only drops whole folios.
                    if offset + len(data) < entry.end:
                        os.posix_fadvise(fd, entry.start, offset + len(data) - entry.start, os.POSIX_FADV_DONTNEED)
                    sent += len(data)
                    yield from self._data(offset, data)
                    unverified += len(data)
                    if unverified >= CHECKPOINT_BYTES and offset + len(data) < entry.end:
                        self._add(self._mac.checkpoint())
                        unverified = 0
            os.posix_fadvise(fd, entry.start, entry.length if part else 0, os.POSIX_FADV_DONTNEED)
            self._add(self._mac.file_end(), entry.length - sent, entry.counted_files)
            return entry
        finally:
            os.close(fd)

    def _data(self, offset: int, data: bytes) -> Iterator[Batch | Future[Batch]]:
        """One DATA frame (ZDATA when compression pays), MACed as DATA; a large one as a batch of its own,
        compressed on the pool's threads."""
        header = self._authenticated(protocol.data_header(offset, len(data)))
        self._mac.update(data)
        min_saving = self._policy.min_saving if self._policy.compressing(len(data)) else None
        if len(data) < self._batch // 4:  # packed with other small frames, compressed here (cheap)
            block = _block(header, offset, data, min_saving)
            self._add(b"".join(block.parts), len(data), saved=block.saved)
            return
        yield from self._flush()
        if min_saving is None:
            yield _block(header, offset, data, None)
        else:
            yield self._pool.submit(_block, header, offset, data, min_saving)

    def _authenticated(self, part: bytes) -> bytes:
        self._mac.update(part)
        return part

    def _entry_frame(self, entry: Entry) -> bytes:
        return self._authenticated(protocol.frame(Kind.ENTRY, entry.encode()))

    def _entry(self, kind: EntryKind, relative: bytes, st: os.stat_result, target: bytes = b"",
               part: Part | None = None) -> Entry:
        return Entry(kind, relative, stat.S_IMODE(st.st_mode), st.st_mtime_ns,
                     st.st_size if kind == EntryKind.FILE else 0, st.st_uid, st.st_gid,
                     self._name("user", st.st_uid), self._name("group", st.st_gid), target, part)

    def _name(self, kind: str, number: int) -> bytes:
        key = (kind, number)
        if key not in self._names:
            try:
                name = pwd.getpwuid(number).pw_name if kind == "user" else grp.getgrgid(number).gr_name
            except KeyError:
                name = ""
            self._names[key] = name.encode()
        return self._names[key]

    def _add(self, part: bytes, data_bytes: int = 0, files: int = 0, saved: int = 0) -> None:
        self._pending.append(part)
        self._pending_size += len(part)
        self._pending_bytes += data_bytes
        self._pending_files += files
        self._pending_saved += saved

    def _flush(self) -> Iterator[Batch]:
        if self._pending:
            yield Batch(self._pending, self._pending_bytes, self._pending_files, saved=self._pending_saved)
        self._pending = []
        self._pending_size = self._pending_bytes = self._pending_files = self._pending_saved = 0


class StreamReader(TreeReader):
    """Yields a hot seed's stream (:data:`~orchagent.seed.protocol.Kind.STREAM`): the bytes read from
    ``fd`` (a backup tool's stdout) until its end, framed and MACed as one file's data.

    ``ended`` is called at the end of the input, before the stream is sealed: it raises if the
    tool failed, and the stream ends with FAIL and the tool's error instead, so a cut-short backup
    never ends as a whole stream.
    """

    def __init__(self, fd: int, port: int, mac: authentication.StreamMac, ended: Callable[[], None],
                 **options) -> None:
        super().__init__("", mac, **options)
        self._fd = fd
        self._port = port
        self._ended = ended

    def _stream(self) -> Iterator[Batch | Future[Batch]]:
        self._add(self._authenticated(protocol.stream_frame(self._port)))
        nbytes = 0
        buffer = memoryview(bytearray(self._chunk))
        while data := _read_up_to(self._fd, buffer):
            yield from self._data(nbytes, data)
            nbytes += len(data)
        try:
            self._ended()
        except TransferFailed as e:
            # in the stream, so the receiver hears the tool's own error (and answers with FAIL)
            yield from self._flush()
            yield Batch([protocol.reason_frame(Kind.FAIL, str(e))], 0, 0, final=True)
            return
        self._add(self._mac.file_end(), 0, 1)
        yield from self._flush()
        yield Batch([self._mac.end(1, nbytes)], 0, 0, final=True)


def _block(header: bytes, offset: int, data: bytes, min_saving: float | None) -> Batch:
    """A block of file data as a batch: a ZDATA frame if compressing it (``min_saving`` not None) pays,
    else its DATA ``header`` and ``data``.  Any thread."""
    frame = None if min_saving is None else zdata(offset, data, min_saving)
    if frame is None:
        return Batch([header, data], len(data), 0)
    return Batch(frame, len(data), 0, saved=len(header) + len(data) - sum(map(len, frame)))


def _read_up_to(fd: int, buffer: memoryview) -> bytes:
    """The next bytes of a pipe, as many as ``buffer`` holds, fewer only at its end; read into that reused
    buffer (a read takes at most what the pipe holds) and copied out once, so every block is one
    allocation of the same size (pieces of many sizes fragment the heap)."""
    got = 0
    while got < len(buffer) and (n := os.readv(fd, [buffer[got:]])):
        got += n
    return bytes(buffer[:got])


def _extents(fd: int, st: os.stat_result, begin: int, end: int) -> Iterator[tuple[int, int]]:
    """(start, end) of the data regions of a file between ``begin`` and ``end``; one unless the file has holes."""
    if st.st_blocks * 512 >= st.st_size:
        if begin < end:
            yield begin, end
        return
    offset = begin
    while offset < end:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole is left
                return
            raise
        if start >= end:
            return
        offset = min(os.lseek(fd, start, os.SEEK_HOLE), end)
        yield start, offset
