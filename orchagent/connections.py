"""Bounds on what a listener's peers may hold: open connections, and the process's open files.

Both listeners (the API and the seed port) count their connections with :class:`ConnectionCap`;
beyond the cap a new connection is closed at once while the open ones go on, so a flood of idle
sockets cannot take the last file descriptor the agent needs for its own work.
"""

from __future__ import annotations

import resource
from typing import Any, Callable

from twisted.internet.protocol import Protocol

from orchagent import logs

log = logs.logger(__name__)

#: File descriptors kept free for everything but client connections (commands, files, MySQL).
RESERVED_FILES = 256


class _Closed(Protocol):
    """Stands in for a connection beyond the cap (a TLS wrapper needs a protocol, not None)."""

    def connectionMade(self) -> None:
        self.transport.abortConnection()


class ConnectionCap:
    """A listener's open connections, at most ``limit``; its protocols call :meth:`closed`."""

    def __init__(self, limit: int, what: str) -> None:
        self.limit = limit
        self.open = 0
        self._what = what
        self._refused_since_log = 0

    def build(self, build_protocol: Callable[[Any], Protocol], addr: Any) -> Protocol:
        """``build_protocol(addr)`` while under the cap, otherwise a protocol that closes at once."""
        if self.open >= self.limit:
            if self._refused_since_log == 0:
                log.warn("{what}: {limit} connections open, closing new ones until some end",
                         what=self._what, limit=self.limit)
            self._refused_since_log += 1
            return _Closed()
        self.open += 1
        if self._refused_since_log:
            log.info("{what}: accepting connections again ({refused} closed at the cap)",
                     what=self._what, refused=self._refused_since_log)
            self._refused_since_log = 0
        return build_protocol(addr)

    def closed(self) -> None:
        self.open -= 1


def raise_open_files_limit(needed: int) -> None:
    """Raise the soft RLIMIT_NOFILE to the hard one (as Go programs do), and warn when even that is
    below ``needed`` plus :data:`RESERVED_FILES`: the connection caps could then exhaust it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass  # keep the soft limit; the check below says what to do
    if soft != resource.RLIM_INFINITY and soft < needed + RESERVED_FILES:
        log.warn("the open-files limit is {soft}, below HTTPMaxConnections + SeedTransferMaxConnections + "
                 "{reserved} ({needed}): raise LimitNOFILE in the unit or lower those keys",
                 soft=soft, reserved=RESERVED_FILES, needed=needed + RESERVED_FILES)
