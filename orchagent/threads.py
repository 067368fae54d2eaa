"""Blocking work (file walks, big reads, fsync) goes to the reactor's thread pool, never its thread."""

from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool


def thread_runner(reactor) -> Callable[..., Deferred]:
    """``run(function, *args)`` -> Deferred of its result; the pool is looked up at first use."""

    def run(function: Callable[..., Any], *args: Any) -> Deferred:
        return deferToThreadPool(reactor, reactor.getThreadPool(), function, *args)

    return run
