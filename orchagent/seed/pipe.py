"""A bounded hand-off between the reactor thread and one worker thread.

The reactor side never blocks: it puts and learns whether the pipe is now full (and should
pause its transport), or gets what is there.  The worker side blocks: it waits for room or for
items.  The bound is in bytes, so memory stays flat whatever the size of the data.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable


class Closed(Exception):
    """The pipe was closed (the transfer is being aborted)."""


class Pipe:
    def __init__(self, limit: int, on_room: Callable[[], None] = lambda: None) -> None:
        """``on_room`` is called (in the worker thread) when a full pipe drained to half."""
        self._limit = limit
        self._on_room = on_room
        self._items: collections.deque[tuple[Any, int]] = collections.deque()
        self._size = 0
        self._full = False
        self._finished = False
        self._closed = False
        self._room_made = False
        self._lock = threading.Condition()

    # reactor side

    def put(self, item: Any, size: int) -> bool:
        """Add without waiting; True means the pipe is over its limit: pause the producer."""
        with self._lock:
            if self._closed:
                raise Closed()
            self._items.append((item, size))
            self._size += size
            self._lock.notify_all()
            self._full = self._size >= self._limit
            return self._full

    def get(self) -> Any | None:
        """An item if one is there, else None."""
        with self._lock:
            if not self._items:
                return None
            return self._take()

    # worker side

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
            item = self._take()
            room_made = self._room_made
        if room_made:
            self._on_room()
        return item

    # either side

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

    @property
    def empty(self) -> bool:
        return not self._items

    def _take(self) -> Any:
        item, size = self._items.popleft()
        self._size -= size
        self._room_made = self._full and self._size <= self._limit // 2
        if self._room_made:
            self._full = False
        self._lock.notify_all()
        return item
