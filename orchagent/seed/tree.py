"""Reading a directory tree into the seed stream, and restoring it from the stream.

Both classes do blocking file I/O and run in worker threads, never in the reactor.

:class:`TreeReader` walks the source without following symlinks (directories before their
contents) and yields batches of frames: small frames are packed together so per-frame overhead
stays off the hot path, file data goes out in large reads, sparse files are read extent by
extent (``SEEK_DATA``/``SEEK_HOLE``) so holes are never sent.  Sockets, fifos and devices are
skipped (a datadir may hold ``mysql.sock``); hard links arrive as separate files.  Files are
opened a few dozen entries ahead of the one being sent, with ``POSIX_FADV_WILLNEED``: with a
cold page cache, reading thousands of small files one by one waits for the disk once per
file, and queueing the next reads lets the disk serve many at once (a third less time for the
small files of the benchmark tree).  What was read is dropped from the page cache at once
(``POSIX_FADV_DONTNEED``), as backup tools do: streaming a whole datadir through the cache would
push out what the source's running MySQL has cached, for data read exactly once.  The range
dropped always starts at the file's start: the cache holds files in folios of up to a few MB,
and the kernel only drops a folio that the range covers whole.

:class:`TreeWriter` receives into ``<datadir>/.orchagent-seed-<id>/``: inside the datadir, so
``du`` of the datadir (orchestrator's progress measure) grows as data arrives, yet hidden, so a
partial copy never looks like a datadir.  The thread that feeds it decodes and authenticates the
stream; a disk thread does the file-system work, chunk by chunk in stream order, so writing one
chunk overlaps with decoding and hashing the next (the stream arrives in a few reused buffers,
each back in use once the disk thread wrote it).  A file is written under a hidden partial name
in its own directory and renamed to its place only after its MAC matched.  In its own
directory, not all in one: ext4 places a new file's inode near its directory's, and without a
journal it scans past every inode deleted in the last minutes for each file it creates, so
thousands of files in one directory right after a datadir was deleted (orchestrator's order,
and a retried seed's) cost seconds of CPU; spread over the tree's directories, as ``tar -x``
spreads them, they do not.

Every file and directory is made durable by ``syncfs`` of the target filesystem, which covers
both: large files start their write-back every few MB, and another helper thread runs
``syncfs`` every 64 MB received, so the kernel writes the small files out in bulk while data
still arrives and the final ``syncfs``, which the sender waits for, has little left.  Then,
unless the receive was aborted meanwhile, the tree is moved into the datadir and the datadir
is fsynced.  Nothing is followed on the
receiving side either: every entry's parent must be a directory this stream created, and all
file-system work goes through directory descriptors below the staging directory that
:mod:`orchagent.seed.staging` made and checked, never through a path the datadir's owner could
redirect.  Received entries belong to the datadir's owner and group, whatever the sender says,
and never keep set-uid, set-gid or sticky bits: a seed cannot plant privileges.  Files get
their owner and mode as they complete (their directories are still the agent's and closed to
others), directories theirs at the end, just before the move.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import functools
import grp
import os
import pwd
import queue
import stat
import threading
from typing import Callable, Iterator

import attrs

from orchagent.seed import protocol
from orchagent.seed.pipe import Closed
from orchagent.seed.protocol import Entry, EntryKind, Kind, ProtocolError, TransferFailed
from orchagent.seed.staging import Staging, open_own_directory

CHUNK_BYTES = 1024 * 1024  # one read and one DATA frame
BATCH_BYTES = 256 * 1024  # small frames are packed together up to this size
READ_AHEAD_FILES = 64  # the sender opens files this far ahead and starts reading them
READ_AHEAD_BYTES = 4 * 1024 * 1024  # of each file opened ahead (sequential read-ahead does the rest)
WRITEBACK_BYTES = 16 * 1024 * 1024  # start write-back of a file every this many bytes
BACKGROUND_SYNC_BYTES = 64 * 1024 * 1024  # make the target durable in the background every this many bytes
RECEIVE_BUFFERS = 3  # the receiver's reused buffers: one being filled, the others with the disk thread
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024
PERMISSION_BITS = 0o777  # what a received entry's mode keeps: no set-uid, set-gid or sticky bit


@attrs.define
class Progress:
    """How far a transfer is.  Byte counts are logical file bytes (holes included).

    Updated by one thread per transfer (the receiver's disk thread; the sender's sending thread,
    or its reactor under TLS); plain int stores, so the
    reactor may read them at any time.  ``started``/``finished`` are reactor times.
    """

    bytes_done: int = 0
    files_done: int = 0
    bytes_total: int | None = None  # None until the sender's quick walk is done
    files_total: int | None = None
    started: float | None = None  # when the peer was authenticated
    finished: float | None = None


@attrs.frozen
class Batch:
    """Frames to write in one go, and the progress they carry."""

    parts: list[bytes]
    data_bytes: int  # logical file bytes completed by these frames (holes included)
    files: int  # files completed by these frames
    totals: tuple[int, int] | None = None  # (files, bytes) of the whole tree, in the first batch
    final: bool = False  # the END frame is in here

    @property
    def size(self) -> int:
        return sum(map(len, self.parts))


# --- sending ---------------------------------------------------------------------------------


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


def _opened_ahead(entries: Iterator[tuple[bytes, bytes, os.stat_result]], depth: int,
                  ) -> Iterator[tuple[bytes, bytes, os.stat_result, int]]:
    """The walk, with each regular file opened ``depth`` entries early and its reading started.

    Reading thousands of small files one after the other waits for the disk once per file;
    ``POSIX_FADV_WILLNEED`` queues the reads of the next files without waiting, so the disk
    works on many at once while this thread hashes and sends.  The consumer owns (and closes)
    the descriptor it is given (-1 for anything but a regular file).
    """
    ahead: collections.deque[tuple[bytes, bytes, os.stat_result, int]] = collections.deque()
    try:
        for relative, path, st in entries:
            fd = -1
            if stat.S_ISREG(st.st_mode):
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                os.posix_fadvise(fd, 0, READ_AHEAD_BYTES, os.POSIX_FADV_WILLNEED)
                if st.st_size > READ_AHEAD_BYTES:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            ahead.append((relative, path, st, fd))
            if len(ahead) > depth:
                yield ahead.popleft()
        while ahead:
            yield ahead.popleft()
    finally:
        for *_, fd in ahead:
            if fd >= 0:
                os.close(fd)


def count_tree(root: str) -> tuple[int, int]:
    """(files, bytes) a transfer of ``root`` will carry: the quick walk behind the totals."""
    files = nbytes = 0
    for _, _, st in _walk(os.fsencode(root)):
        if stat.S_ISREG(st.st_mode):
            files += 1
            nbytes += st.st_size
    return files, nbytes


class TreeReader:
    """Yields the whole stream for one source directory as :class:`Batch` es."""

    def __init__(self, root: str, mac: protocol.StreamMac, chunk_bytes: int = CHUNK_BYTES,
                 batch_bytes: int = BATCH_BYTES) -> None:
        self._root = os.fsencode(root)
        self._mac = mac  # every frame goes through it (protocol module docstring)
        self._chunk = chunk_bytes
        self._batch = batch_bytes
        self._names: dict[tuple[str, int], bytes] = {}
        self._pending: list[bytes] = []
        self._pending_size = self._pending_bytes = self._pending_files = 0

    def batches(self) -> Iterator[Batch]:
        if not os.path.isdir(self._root):
            raise TransferFailed(f"seed source {os.fsdecode(self._root)!r} is not a directory")
        totals = count_tree(os.fsdecode(self._root))
        yield Batch([self._authenticated(protocol.counts_frame(Kind.TOTALS, *totals))], 0, 0, totals=totals)
        entries = _opened_ahead(_walk(self._root), READ_AHEAD_FILES)
        try:
            yield from self._entries(entries)
        finally:
            entries.close()  # closes the files opened ahead when the transfer stops early

    def _entries(self, entries: Iterator[tuple[bytes, bytes, os.stat_result, int]]) -> Iterator[Batch]:
        files = nbytes = 0
        for relative, path, st, fd in entries:
            if stat.S_ISDIR(st.st_mode):
                self._add(self._entry_frame(self._entry(EntryKind.DIR, relative, st)))
            elif stat.S_ISLNK(st.st_mode):
                entry = self._entry(EntryKind.SYMLINK, relative, st, target=os.readlink(path))
                self._add(self._entry_frame(entry))
            elif stat.S_ISREG(st.st_mode):
                size = yield from self._file(relative, path, fd)
                files += 1
                nbytes += size
            if self._pending_size >= self._batch:
                yield from self._flush()
        yield from self._flush()
        yield Batch([self._mac.end(files, nbytes)], 0, 0, final=True)

    def _file(self, relative: bytes, path: bytes, fd: int) -> Iterator[Batch]:
        try:
            st = os.fstat(fd)
            self._add(self._entry_frame(self._entry(EntryKind.FILE, relative, st)))
            sent = 0
            for start, end in _extents(fd, st):
                for offset in range(start, end, self._chunk):
                    data = os.pread(fd, min(self._chunk, end - offset), offset)
                    if not data:
                        raise TransferFailed(f"source file {os.fsdecode(path)!r} shrank while it was sent")
                    if offset + len(data) < st.st_size:  # drop what was read (module docstring)
                        os.posix_fadvise(fd, 0, offset + len(data), os.POSIX_FADV_DONTNEED)
                    header = self._authenticated(protocol.data_header(offset, len(data)))
                    self._mac.update(data)
                    sent += len(data)
                    if len(data) >= self._batch // 4:
                        yield from self._flush()
                        yield Batch([header, data], len(data), 0)
                    else:
                        self._add(header + data, len(data))
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            self._add(self._mac.file_end(), st.st_size - sent, 1)
            return st.st_size
        finally:
            os.close(fd)

    def _authenticated(self, part: bytes) -> bytes:
        self._mac.update(part)
        return part

    def _entry_frame(self, entry: Entry) -> bytes:
        return self._authenticated(protocol.frame(Kind.ENTRY, entry.encode()))

    def _entry(self, kind: EntryKind, relative: bytes, st: os.stat_result, target: bytes = b"") -> Entry:
        return Entry(kind, relative, stat.S_IMODE(st.st_mode), st.st_mtime_ns,
                     st.st_size if kind == EntryKind.FILE else 0, st.st_uid, st.st_gid,
                     self._name("user", st.st_uid), self._name("group", st.st_gid), target)

    def _name(self, kind: str, number: int) -> bytes:
        key = (kind, number)
        if key not in self._names:
            try:
                name = pwd.getpwuid(number).pw_name if kind == "user" else grp.getgrgid(number).gr_name
            except KeyError:
                name = ""
            self._names[key] = name.encode()
        return self._names[key]

    def _add(self, part: bytes, data_bytes: int = 0, files: int = 0) -> None:
        self._pending.append(part)
        self._pending_size += len(part)
        self._pending_bytes += data_bytes
        self._pending_files += files

    def _flush(self) -> Iterator[Batch]:
        if self._pending:
            yield Batch(self._pending, self._pending_bytes, self._pending_files)
        self._pending = []
        self._pending_size = self._pending_bytes = self._pending_files = 0


def _extents(fd: int, st: os.stat_result) -> Iterator[tuple[int, int]]:
    """(start, end) of the data regions of a file; one region unless the file has holes."""
    if st.st_blocks * 512 >= st.st_size:
        if st.st_size:
            yield 0, st.st_size
        return
    offset = 0
    while offset < st.st_size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole is left
                return
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), st.st_size)
        yield start, end
        offset = end


# --- receiving -------------------------------------------------------------------------------


class TreeWriter:
    """Restores the stream into a datadir through a staging directory (a ``StreamHandler``)."""

    def __init__(self, datadir: str, seed_id: str, progress: Progress | None = None, *,
                 mac: protocol.StreamMac) -> None:
        self._staging = Staging(datadir, seed_id)
        self.datadir = self._staging.datadir
        self.progress = progress if progress is not None else Progress()
        self._decoder = protocol.StreamDecoder(self, mac)
        self._calls: list[tuple[Callable[..., None], tuple]] = []  # disk work of the chunk being decoded
        self._disk: _DiskThread | None = None
        self._buffers: queue.SimpleQueue[memoryview] = queue.SimpleQueue()  # the free ones
        self._ring: dict[int, memoryview] = {}  # every receive buffer, by id() of its bytearray
        self._directories: dict[bytes, tuple[int, int]] = {b"": (0, 0)}  # path -> (mode, mtime_ns)
        self._as_root = os.geteuid() == 0
        self._directory_open: tuple[bytes, int] | None = None  # (relative path, descriptor) last written into
        self._file: Entry | None = None
        self._fd = -1
        self._written = self._flushed = self._end = 0  # bytes written, of them flushed; end of the data
        self._temp = b""
        self._partial_serial = 0
        self._ended: tuple[int, int] | None = None
        self._received_files = self._received_bytes = 0
        self._syncer: _BackgroundSync | None = None
        self._unsynced = 0  # bytes written since the last background sync was asked for

    def start(self) -> None:
        """Create a fresh staging directory (a stale one from a crash is removed first)."""
        self._staging.create()
        self._syncer = _BackgroundSync(self._staging.fd)
        self._disk = _DiskThread()
        for _ in range(RECEIVE_BUFFERS):
            buffer = memoryview(bytearray(RECEIVE_BUFFER_BYTES))
            self._ring[id(buffer.obj)] = buffer
            self._buffers.put(buffer)

    def free_buffer(self) -> memoryview:
        """A buffer to receive the next chunk into; waits while the disk thread holds all of them."""
        return self._buffers.get()

    def feed(self, chunk: bytes | memoryview) -> None:
        """Decode and verify ``chunk`` in this thread; the disk thread does its file-system work.

        A chunk that is a view of a :meth:`free_buffer` goes back to the free buffers once the
        disk thread is done with it.  Any other chunk is first copied into free buffers, so the
        disk thread's backlog never holds more than those, however far behind the disk is.
        """
        buffer = self._ring.get(id(chunk.obj)) if isinstance(chunk, memoryview) else None
        if buffer is None:
            for start in range(0, len(chunk), RECEIVE_BUFFER_BYTES):
                piece = memoryview(chunk)[start:start + RECEIVE_BUFFER_BYTES]
                view = self.free_buffer()[:len(piece)]
                view[:] = piece
                self.feed(view)
            return
        try:
            self._decoder.feed(chunk)
        finally:
            calls, self._calls = self._calls, []
            self._disk.submit(calls, functools.partial(self._buffers.put, buffer))
        self._disk.check()

    @property
    def ended(self) -> bool:
        return self._ended is not None

    # StreamHandler

    def totals(self, files: int, nbytes: int) -> None:
        self.progress.files_total, self.progress.bytes_total = files, nbytes

    def entry(self, entry: Entry) -> None:
        """Check the entry against the stream so far here; the disk thread creates it."""
        parent = entry.path.rpartition(b"/")[0]
        if parent not in self._directories:
            raise ProtocolError(f"{os.fsdecode(entry.path)!r} arrived before its directory")
        if entry.kind == EntryKind.DIR:
            self._directories[entry.path] = (entry.mode, entry.mtime_ns)
        self._calls.append((self._write_entry, (entry,)))

    def data(self, offset: int, piece: memoryview) -> None:
        self._calls.append((self._write_data, (offset, piece)))

    def file_end(self) -> None:
        """The decoder authenticated the file before this; the disk thread gives it its name."""
        self._calls.append((self._complete_file, ()))

    def end(self, files: int, nbytes: int) -> None:
        self._ended = (files, nbytes)

    # the disk thread's work, in stream order

    def _write_entry(self, entry: Entry) -> None:
        parent, _, name = entry.path.rpartition(b"/")
        directory = self._directory(parent)
        if entry.kind == EntryKind.DIR:
            os.mkdir(name, 0o700, dir_fd=directory)  # the agent's, closed to others, until finish()
        elif entry.kind == EntryKind.SYMLINK:
            os.symlink(entry.target, name, dir_fd=directory)
            if self._as_root:
                os.chown(name, *self._staging.owner, dir_fd=directory, follow_symlinks=False)
            os.utime(name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=directory, follow_symlinks=False)
        else:
            self._temp, self._fd = self._create_partial(directory)
            self._file = entry
            self._written = self._flushed = self._end = 0

    def _write_data(self, offset: int, piece: memoryview) -> None:
        while piece:
            written = os.pwrite(self._fd, piece, offset)
            piece, offset = piece[written:], offset + written
            self._written += written
            self.progress.bytes_done += written
        self._end = offset
        if self._written - self._flushed >= WRITEBACK_BYTES:
            # Start write-back now (non-blocking) so the disk works while data still arrives,
            # instead of all at the final sync.  The pages are dirty yet, so they stay cached:
            # the target's MySQL is stopped, and it reads them first when it starts.
            os.posix_fadvise(self._fd, self._flushed, self._written - self._flushed, os.POSIX_FADV_DONTNEED)
            self._flushed = self._written

    def _complete_file(self) -> None:
        entry, fd = self._file, self._fd
        self._file, self._fd = None, -1
        try:
            if self._end != entry.size:
                os.ftruncate(fd, entry.size)  # trailing holes
            if self._as_root:
                os.fchown(fd, *self._staging.owner)
            os.fchmod(fd, entry.mode & PERMISSION_BITS)
            os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
        finally:
            os.close(fd)
        parent, _, name = entry.path.rpartition(b"/")
        directory = self._directory(parent)
        os.rename(self._temp, name, src_dir_fd=directory, dst_dir_fd=directory)
        self.progress.bytes_done += entry.size - self._written
        self.progress.files_done += 1
        self._received_files += 1
        self._received_bytes += entry.size
        self._unsynced += self._written
        if self._unsynced >= BACKGROUND_SYNC_BYTES:
            self._syncer.request()
            self._unsynced = 0

    # the end

    def finish(self, cancelled: Callable[[], bool] = lambda: False) -> None:
        """After END: check the counts, make everything durable, move it into the datadir.

        ``cancelled`` is asked just before the move: an aborted receive never fills the datadir.
        """
        if self._ended is None:
            raise TransferFailed("the connection ended before the sender finished the tree")
        self._stop_disk(discard=False)
        if self._ended != (self._received_files, self._received_bytes):
            raise ProtocolError(f"the sender sent {self._ended[0]} files ({self._ended[1]} bytes) but "
                                f"{self._received_files} files ({self._received_bytes} bytes) arrived")
        self._close_directory()
        # Children before parents, so each directory is handed over after everything on its way
        # was opened as the agent's own.
        for relative in sorted(self._directories, reverse=True):
            if relative:
                mode, mtime_ns = self._directories[relative]
                fd = self._open_directory(relative)
                try:
                    if self._as_root:
                        os.fchown(fd, *self._staging.owner)
                    os.fchmod(fd, mode & PERMISSION_BITS)
                    os.utime(fd, ns=(mtime_ns, mtime_ns))
                finally:
                    os.close(fd)
        self._syncer.close()
        _syncfs(self._staging.fd)
        if cancelled():
            raise Closed()
        self._staging.move_into_datadir()

    def discard(self) -> None:
        """Remove everything this receive wrote (after a failure or an abort)."""
        if self._disk is not None:
            self._stop_disk(discard=True)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._syncer is not None:
            try:
                self._syncer.close()
            except OSError:
                pass  # the data is being thrown away
        self._close_directory()
        self._staging.remove()

    # helpers

    def _stop_disk(self, discard: bool) -> None:
        """End the disk thread and drop the receive buffers at once.

        A finished transfer may live on in reference cycles until the cyclic collector runs,
        which a few large buffers do not prompt; without this each seed would leave its
        buffers behind for a while.
        """
        try:
            self._disk.close(discard)
        finally:
            self._buffers = queue.SimpleQueue()
            self._ring.clear()

    def _create_partial(self, directory: int) -> tuple[bytes, int]:
        """(name, descriptor) of a new empty file, hidden, in ``directory``."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        while True:
            self._partial_serial += 1
            name = b".orchagent-partial-%d" % self._partial_serial
            try:
                return name, os.open(name, flags, 0o600, dir_fd=directory)
            except FileExistsError:
                continue  # the tree itself has a file of that name

    def _directory(self, relative: bytes) -> int:
        """A descriptor of the staging tree's directory ``relative``, kept while entries go there.

        The sender sends a directory's entries together, so this opens each directory about once.
        """
        if self._directory_open is not None and self._directory_open[0] == relative:
            return self._directory_open[1]
        fd = self._open_directory(relative)
        self._close_directory()
        self._directory_open = (relative, fd)
        return fd

    def _close_directory(self) -> None:
        if self._directory_open is not None:
            os.close(self._directory_open[1])
            self._directory_open = None

    def _open_directory(self, relative: bytes) -> int:
        """Open a directory of the staging tree step by step from the tree's descriptor."""
        fd = os.dup(self._staging.tree_fd)
        for name in relative.split(b"/") if relative else ():
            try:
                child = open_own_directory(name, fd)
            finally:
                os.close(fd)
            fd = child
        return fd


_libc = ctypes.CDLL(None, use_errno=True)


def _syncfs(fd: int) -> None:
    """Flush every file and directory of the filesystem holding ``fd``."""
    if _libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"syncfs failed: {os.strerror(err)}")


class _DiskThread:
    """Runs the receiver's file-system work in stream order, while the next chunk is decoded.

    Decoding and hashing a chunk and writing it out take about the same CPU time; in one
    thread they took turns, and the sender waited.  The work comes as one list of calls per
    received chunk; after it, ``release`` gives the chunk's buffer back.  After a failure the
    thread stops working but still releases buffers, so the decoding thread never waits
    forever for one; :meth:`check` raises the failure there.
    """

    def __init__(self) -> None:
        self._work: queue.SimpleQueue[tuple[list, Callable[[], None]] | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._discarding = False
        self._thread = threading.Thread(target=self._run, name="seed-write", daemon=True)
        self._thread.start()

    def submit(self, calls: list[tuple[Callable[..., None], tuple]], release: Callable[[], None]) -> None:
        self._work.put((calls, release))

    def check(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (item := self._work.get()) is not None:
            calls, release = item
            if self._error is None and not self._discarding:
                try:
                    for call, args in calls:
                        call(*args)
                except BaseException as e:  # handed to the decoding thread by check()
                    self._error = e
            release()

    def close(self, discard: bool = False) -> None:
        """Finish the work submitted (or skip it when ``discard``), end the thread, raise a failure."""
        if self._thread.is_alive():
            self._discarding = discard
            self._work.put(None)
            self._thread.join()
        if not discard:
            self.check()


class _BackgroundSync:
    """A thread that runs ``syncfs`` on the target while more data arrives, one at a time.

    Left alone, the kernel writes small files out only at the final sync, which then takes
    most of a second per GB after the last byte arrived.  A ``syncfs`` every so many MB lets
    the kernel's flusher write them in bulk while the transfer goes on (cheaper than starting
    write-back file by file from the writer thread, and it costs the writer nothing), so the
    final sync only has the last few MB left.
    """

    def __init__(self, fd: int) -> None:
        self._fd = os.dup(fd)
        self._wanted = threading.Event()
        self._stopping = False
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="seed-sync", daemon=True)
        self._thread.start()

    def request(self) -> None:
        """Sync soon (once, however often it is asked while a sync runs)."""
        self._wanted.set()

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self._stopping:
                return
            try:
                _syncfs(self._fd)
            except OSError as e:
                self._error = e
                return

    def close(self) -> None:
        """Wait for a sync in progress and end the thread; raise what a background sync hit."""
        if self._fd < 0:
            return  # closed before (finish, then discard after a later failure)
        self._stopping = True
        self._wanted.set()
        self._thread.join()
        os.close(self._fd)
        self._fd = -1
        if self._error is not None:
            raise self._error
