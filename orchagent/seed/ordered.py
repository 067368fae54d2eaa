"""Jobs on a few threads, their results handed on in the order the jobs were given.

The sender's reader thread MACs every frame in stream order, then hands each large block to
:class:`OrderedPool` to compress (zstd releases the GIL, so the threads use every core while the
reader goes on reading and MACing).  :meth:`OrderedPool.in_order` puts each result back at its
job's place, whichever thread finished first, so the stream sent is the stream the MAC covers.
At most ``ahead`` jobs are in flight (memory stays bounded, whatever the source); a job's error
is raised in the consumer's thread at the job's place; the threads end when the stream ends or
is closed (an aborted transfer closes it).
"""

from __future__ import annotations

import collections
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Generic, Iterable, Iterator, TypeVar

T = TypeVar("T")

THREAD_NAME = "seed-compress"


class OrderedPool(Generic[T]):
    """Runs :meth:`submit` ted jobs on up to ``workers`` threads (started on the first job)."""

    def __init__(self, workers: int, ahead: int) -> None:
        self._workers = workers
        self._ahead = ahead
        self._executor: ThreadPoolExecutor | None = None

    def submit(self, job: Callable[..., T], *args: object) -> Future[T]:
        """``job(*args)`` on a pool thread; put the future among the items of :meth:`in_order`."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._workers, thread_name_prefix=THREAD_NAME)
        return self._executor.submit(job, *args)

    def in_order(self, items: Iterable[T | Future[T]]) -> Iterator[T]:
        """``items`` in their order, each future replaced by its result once everything before it is out.

        Drawing the next item waits only while more than ``ahead`` futures are unfinished; closing
        this iterator (or an error) stops the pool: queued jobs are dropped, running ones finish.
        """
        waiting: collections.deque[T | Future[T]] = collections.deque()
        running = 0
        try:
            for item in items:
                waiting.append(item)
                running += isinstance(item, Future)
                while waiting and (running > self._ahead or _ready(waiting[0])):
                    running -= isinstance(waiting[0], Future)
                    yield _result(waiting.popleft())
            while waiting:
                yield _result(waiting.popleft())
        finally:
            self.close()

    def close(self) -> None:
        """Drop the queued jobs and wait for the running ones (a block's compression: milliseconds)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


def _ready(item: object) -> bool:
    return not isinstance(item, Future) or item.done()


def _result(item: T | Future[T]) -> T:
    return item.result() if isinstance(item, Future) else item
