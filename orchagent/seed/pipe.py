"""A bounded hand-off between two worker threads (the sender's reader and its sending thread).

The producer waits for room, the consumer for items.  The bound is in bytes, so memory stays
flat whatever the size of the data.
"""

from __future__ import annotations

import collections
import threading
from typing import Any


class Closed(Exception):
    """The pipe was closed (the transfer is being aborted)."""


class Pipe:
    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._items: collections.deque[tuple[Any, int]] = collections.deque()
        self._size = 0
        self._finished = False
        self._closed = False
        self._lock = threading.Condition()

    def put_wait(self, item: Any, size: int) -> None:
        with self._lock:
            while self._size >= self._limit and not self._closed:
                self._lock.wait()
            if self._closed:
                raise Closed()
            self._items.append((item, size))
            self._size += size
            self._lock.notify_all()

    def get_wait(self) -> Any | None:
        """The next item; None once the producer finished and everything was taken."""
        with self._lock:
            while not self._items and not self._finished and not self._closed:
                self._lock.wait()
            if self._closed:
                raise Closed()
            if not self._items:
                return None
            item, size = self._items.popleft()
            self._size -= size
            self._lock.notify_all()
            return item

    def finish(self) -> None:
        """No more items will come; the consumer gets None after the last one."""
        with self._lock:
            self._finished = True
            self._lock.notify_all()

    def close(self) -> None:
        """Abort: drop everything, wake every waiter with :class:`Closed`."""
        with self._lock:
            self._closed = True
            self._items.clear()
            self._size = 0
            self._lock.notify_all()
