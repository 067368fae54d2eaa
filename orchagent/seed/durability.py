"""The receiver's helper threads (file-system work, background ``syncfs``) and ``syncfs`` itself.

They let writing overlap with decoding, and the kernel write small files out while data still
arrives, so the final sync the sender waits for has little left.
"""

from __future__ import annotations

import ctypes
import os
import queue
import threading
from typing import Callable

_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(fd: int) -> None:
    """Flush every file and directory of the filesystem holding ``fd``."""
    if _libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"syncfs failed: {os.strerror(err)}")


class DiskThread:
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


class BackgroundSync:
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
                syncfs(self._fd)
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
