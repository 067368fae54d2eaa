"""Restoring a directory tree from the seed stream into a datadir (the receiver's worker thread).

The tree is written into a staging directory (:mod:`orchagent.seed.staging`) through directory
descriptors only, each file under a hidden partial name renamed once its MAC matched (a large
file sent in ranges over several lanes: once all arrived, :mod:`orchagent.seed.ranges`); entries
get the datadir's owner and lose set-uid, set-gid and sticky bits.  Everything is made durable
(:mod:`orchagent.seed.durability`) before the tree moves into the datadir.  A writer lives as long
as its seed's transfer; when a connection drops, :meth:`TreeWriter.rewind` undoes what was not
verified, and the next connection's stream continues from there (:mod:`orchagent.seed.resumption`).
"""

from __future__ import annotations

import functools
import os
import queue
import threading
from typing import Callable

from orchagent.seed import authentication, decoder, resumption
from orchagent.seed.hotseed import Extractor
from orchagent.seed.lanes import SharedStaging
from orchagent.seed.durability import BackgroundSync, DiskThread
from orchagent.seed.protocol import Entry, EntryKind, ProtocolError, TransferFailed
from orchagent.seed.ranges import punch
from orchagent.seed.staging import TreeDirectories, open_own_directory, seal_file
from orchagent.seed.outcome import Progress

WRITEBACK_BYTES = 16 * 1024 * 1024  # start write-back of a file every this many bytes
BACKGROUND_SYNC_BYTES = 64 * 1024 * 1024  # make the target durable in the background every this many bytes
RECEIVE_BUFFERS = 3  # the receiver's reused buffers: one being filled, the others with the disk thread
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024  # per seed: split between its lanes (parallel streams)
MIN_RECEIVE_BUFFER_BYTES = 1024 * 1024  # a lane's, at least: one DATA frame
INFLATED_BATCH_BYTES = 4 * 1024 * 1024  # decompressed data handed to the disk thread at once, per seed: split too
INFLATED_BATCHES = 3  # of them at most with the disk thread: a tiny chunk of ZDATA frames cannot fill memory


class TreeWriter:
    """Restores the stream into a datadir through a staging directory (a ``StreamHandler``)."""

    def __init__(self, datadir: str, seed_id: str, progress: Progress | None = None, *,
                 mac: authentication.StreamMac, extractor: Extractor | None = None,
                 shared: SharedStaging | None = None) -> None:
        """``extractor``: unpacks a hot seed's stream (:mod:`orchagent.seed.hotseed`); without one a
        stream is refused.  ``shared``: the staging directory of a seed received over several lanes
        (:mod:`orchagent.seed.lanes`), each with a writer of its own."""
        self._shared = shared if shared is not None else SharedStaging(datadir, seed_id)
        self._staging = self._shared.staging
        self._started = False  # holds the shared staging directory (until discard)
        self._buffer_bytes = RECEIVE_BUFFER_BYTES  # of each receive buffer (start() splits them between lanes)
        self._extractor = extractor
        self._streaming = False  # a hot seed's stream is going to the extractor
        self.source_port: int | None = None  # a hot seed's: the source's MySQL port
        self.datadir = self._staging.datadir
        self.progress = progress if progress is not None else Progress()
        self.verified = resumption.Verified()
        self._decoder = decoder.StreamDecoder(self, mac)  # this connection's
        self._expanded = 0  # what decompression added on the connections before
        self._calls: list[tuple[Callable[..., None], tuple]] = []  # disk work of the chunk being decoded
        self._disk: DiskThread | None = None
        self._buffers: queue.SimpleQueue[memoryview] = queue.SimpleQueue()  # the free ones
        self._inflated_room = threading.Semaphore(INFLATED_BATCHES)
        self._inflated_batch_bytes = INFLATED_BATCH_BYTES  # start() splits it between lanes, as the buffers
        self._inflated = 0  # decompressed bytes in the calls not yet handed over
        self._ring: dict[int, memoryview] = {}  # every receive buffer, by id() of its bytearray
        self._directories: dict[bytes, tuple[int, int]] = {b"": (0, 0)}  # path -> (mode, mtime_ns)
        self._as_root = os.geteuid() == 0
        self._tree = TreeDirectories(self._staging)  # the disk thread's way into the staging tree
        self._file: Entry | None = None
        self._fd = -1
        self._written = self._flushed = self._end = 0  # bytes written, of them flushed; end of the data
        self._temp = b""
        self._ended: tuple[int, int] | None = None
        self._received_files = self._received_bytes = 0
        self._syncer: BackgroundSync | None = None
        self._unsynced = 0  # bytes written since the last background sync was asked for

    def start(self) -> None:
        """Create a fresh staging directory (a stale one from a crash is removed first), or join the
        one another lane of the seed made."""
        self._shared.start()
        self._started = True
        self._syncer = BackgroundSync(self._staging.fd)
        self._disk = DiskThread()
        self._buffer_bytes = max(RECEIVE_BUFFER_BYTES // self._shared.lanes, MIN_RECEIVE_BUFFER_BYTES)
        self._inflated_batch_bytes = max(INFLATED_BATCH_BYTES // self._shared.lanes, MIN_RECEIVE_BUFFER_BYTES)
        for _ in range(RECEIVE_BUFFERS):
            buffer = memoryview(bytearray(self._buffer_bytes))
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
            for start in range(0, len(chunk), self._buffer_bytes):
                piece = memoryview(chunk)[start:start + self._buffer_bytes]
                view = self.free_buffer()[:len(piece)]
                view[:] = piece
                self.feed(view)
            return
        try:
            self._decoder.feed(chunk)
        finally:
            self._hand_over(functools.partial(self._buffers.put, buffer))
        self.progress.wire_bytes += len(chunk)
        self.progress.data_bytes = self.progress.wire_bytes + self._expanded + self._decoder.expanded
        self._disk.check()

    def _hand_over(self, release: Callable[[], None]) -> None:
        """Give the disk thread the calls so far; ``release`` runs once it is done with them."""
        calls, self._calls = self._calls, []
        self._inflated = 0
        self._disk.submit(calls, release)

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
        self.verified.entry(entry)
        self._calls.append((self._write_entry, (entry,)))

    def stream(self, port: int) -> None:
        if self._shared.shared:
            raise ProtocolError("a hot seed's stream on one of several connections (it has one)")
        if self._extractor is None:
            raise ProtocolError("the sender sent a hot seed's stream, which this receiver cannot extract")
        if len(self._directories) > 1 or self._received_files:
            raise ProtocolError("a hot seed's stream after tree entries")
        self.source_port = port
        self._calls.append((self._start_stream, ()))

    def data(self, offset: int, piece: memoryview) -> None:
        self._calls.append((self._write_data, (offset, piece)))
        if id(piece.obj) not in self._ring:  # decompressed: memory of its own, handed over in bounded batches
            self._inflated += len(piece)
            if self._inflated >= self._inflated_batch_bytes:
                self._inflated_room.acquire()  # the disk thread releases it, also after a failure
                self._hand_over(self._inflated_room.release)

    def checkpoint(self, offset: int) -> None:
        self.verified.checkpoint(offset)

    def file_end(self) -> None:
        """The decoder authenticated the file before this; the disk thread gives it its name."""
        if self.source_port is None:
            self.verified.file_end()
        self._calls.append((self._complete_file, ()))

    def end(self, files: int, nbytes: int) -> None:
        self._ended = (files, nbytes)

    # the disk thread's work, in stream order

    def _write_entry(self, entry: Entry) -> None:
        parent, _, name = entry.path.rpartition(b"/")
        directory = self._tree.directory(parent)
        if entry.kind == EntryKind.DIR:
            try:
                os.mkdir(name, 0o700, dir_fd=directory)  # the agent's, closed to others, until finish()
            except FileExistsError:
                if not self._shared.shared:
                    raise
                os.close(open_own_directory(name, directory))  # another lane's: it must be a directory of ours
        elif entry.kind == EntryKind.SYMLINK:
            os.symlink(entry.target, name, dir_fd=directory)
            if self._as_root:
                os.chown(name, *self._staging.owner, dir_fd=directory, follow_symlinks=False)
            os.utime(name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=directory, follow_symlinks=False)
        else:
            self._file, self._written, self._flushed, self._end = entry, 0, 0, entry.start
            if entry.part is None:
                self._temp, self._fd = self._tree.create_partial(directory)
            else:  # a range: the file is all lanes', made once, by the first to need it
                self._fd = self._shared.ranged.open(entry, directory, self._tree.create_partial)

    def _start_stream(self) -> None:
        self._extractor.start(self._staging.tree_path(), self.source_port)
        self._streaming = True

    def _write_data(self, offset: int, piece: memoryview) -> None:
        if self._streaming:
            self._extractor.write(piece)
            self._written += len(piece)
            self.progress.bytes_done += len(piece)  # mysql-du follows this count
            return
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
            os.posix_fadvise(self._fd, self._file.start + self._flushed, self._written - self._flushed,
                             os.POSIX_FADV_DONTNEED)
            self._flushed = self._written

    def _complete_file(self) -> None:
        if self._streaming:
            self._streaming = False
            self._extractor.end()
            self.progress.files_done += 1
            self._received_files += 1
            self._received_bytes += self._written
            return
        entry, fd = self._file, self._fd
        self._file, self._fd = None, -1
        if entry.part is None:
            try:
                seal_file(fd, entry, self._staging.owner if self._as_root else None)
            finally:
                os.close(fd)
            parent, _, name = entry.path.rpartition(b"/")
            directory = self._tree.directory(parent)
            os.rename(self._temp, name, src_dir_fd=directory, dst_dir_fd=directory)
        else:
            os.close(fd)
            self._shared.ranged.arrived(entry)  # sealed once every lane is done (SharedStaging.move_in)
        self.progress.bytes_done += entry.length - self._written
        self.progress.files_done += entry.counted_files
        self._received_files += entry.counted_files
        self._received_bytes += entry.length
        self._unsynced += self._written
        if self._unsynced >= BACKGROUND_SYNC_BYTES:
            self._syncer.request()
            self._unsynced = 0

    # a dropped connection

    def rewind(self) -> int:
        """The connection dropped before END: undo what it brought after the last verified tag.

        Waits for the disk thread to write what was decoded, then (in stream order, on the disk
        thread) cuts the file in progress back to its verified offset and removes the entries
        applied but not verified, latest first.  Returns the bytes thrown away (to be sent again).
        """
        if self.source_port is not None:
            raise TransferFailed("the connection dropped during a hot seed, whose backup stream cannot be "
                                 "sent again: start the seed anew")
        point, undo = self.verified.point, self.verified.dropped()
        for entry in undo:
            if entry.kind == EntryKind.DIR:
                del self._directories[entry.path]
        rewound = threading.Event()
        self._disk.submit([(self._roll_back, (undo, point.offset))], rewound.set)
        rewound.wait()
        self._disk.check()
        thrown_away = max(self.progress.bytes_done - point.nbytes, 0)
        self.progress.bytes_done, self.progress.files_done = point.nbytes, point.files
        self._expanded += self._decoder.expanded
        return thrown_away

    def reconnected(self, mac: authentication.StreamMac) -> resumption.ResumePoint:
        """A new connection's stream (``mac``: its MAC) continues after the verified point, returned."""
        point = self.verified.point
        resumed = (self.verified.file, point.offset) if point.in_file else None
        self._decoder = decoder.StreamDecoder(self, mac, resumed)
        return point

    def _roll_back(self, undo: list[Entry], offset: int) -> None:
        """Disk thread: back to the verified point (see :meth:`rewind`)."""
        if any(entry is self._file for entry in undo):  # begun after the last tag: all of it goes
            if self._file.part is None:
                os.unlink(self._temp, dir_fd=self._tree.directory(self._file.path.rpartition(b"/")[0]))
            else:  # other lanes write the file too: only this range's bytes go
                punch(self._fd, self._file.start, self._end - self._file.start)
            os.close(self._fd)
            self._file, self._fd = None, -1
        elif self._file is not None:  # the file in progress: back to its last verified byte
            end, self._end = self._end, self._file.start + offset
            if self._file.part is None:
                os.ftruncate(self._fd, offset)
            else:
                punch(self._fd, self._end, end - self._end)
            self._written = offset
            self._flushed = min(self._flushed, offset)
        for entry in undo:
            if entry.kind == EntryKind.SYMLINK or (entry.kind == EntryKind.DIR and not self._shared.shared):
                parent, _, name = entry.path.rpartition(b"/")
                directory = self._tree.directory(parent)
                (os.rmdir if entry.kind == EntryKind.DIR else os.unlink)(name, dir_fd=directory)
        self._tree.close()  # it may be one just removed, which a resumed stream makes anew

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
        self._tree.close()
        self._syncer.close()
        if self.source_port is not None:
            self._extractor.prepare(self._staging.tree_path(), self._staging.tree_fd,
                                    self._staging.owner if self._as_root else None)
        self._shared.finish(self._directories, lambda directories: self._shared.move_in(directories, cancelled))

    def discard(self) -> None:
        """Remove everything this receive wrote (after a failure or an abort)."""
        if self._extractor is not None:
            self._extractor.abort()
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
        self._tree.close()
        if self._started:
            self._started = False
            self._shared.discard()

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
