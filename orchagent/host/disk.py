"""Disk usage (``du -sb``) and free space (``df -PT -B 1``), cached briefly and never on the reactor.

Orchestrator asks for the datadir's usage and free space on every poll, and for the snapshot's
usage on every ``mount``; the seed loop watches the target's usage grow.  A ``du`` of a big
datadir takes a while, so walks go through a :class:`~orchagent.cache.ShortCache`: fresh for
:data:`CACHE_SECONDS`, answered stale (while a new walk runs) up to :data:`STALE_SECONDS`.
Commands that change what is on disk call :meth:`DiskUsage.invalidate`.
"""

from __future__ import annotations

import os
import re
from typing import Callable

from orchagent.cache import ShortCache
from orchagent.commands import CommandFailed
from orchagent.errors import AgentError, InvalidInput, NotFound
from orchagent.interfaces import Clock, ProcessRunner

CACHE_SECONDS = 5.0
#: An older value is still answered at once (while a fresh walk starts) up to this age.
STALE_SECONDS = 60.0

_DF_ROW = re.compile(r"^(?P<source>.*?)\s+(?P<type>\S+)\s+(?P<size>\d+)\s+(?P<used>\d+)\s+(?P<available>\d+)"
                     r"\s+(?:\d+%|-)\s+(?P<mount_point>.*)$")


def parse_du(text: str) -> int | None:
    """Bytes from ``du -sb <path>``: the first token of the last line (the total)."""
    lines = text.strip("\n").splitlines()
    token = lines[-1].split(maxsplit=1)[0] if lines and lines[-1].strip() else ""
    return int(token) if token.isdigit() else None


def parse_df(text: str) -> int | None:
    """Available bytes from ``df -PT -B 1 <path>``: column 5 of the first row after the header."""
    for line in text.splitlines():
        if line.startswith("Filesystem"):
            continue
        match = _DF_ROW.match(line)
        if match:
            return int(match.group("available"))
    return None


def resolve_inside(path: str, roots: list[str]) -> str:
    """``path`` (already checked by ``web.validate.absolute_path``) with symlinks resolved, if that
    lies inside one of ``roots`` (also resolved).

    InvalidInput when it is relative or outside; NotFound when it does not exist.
    """
    if not path.startswith("/"):
        raise InvalidInput("path must be absolute")  # a relative one would resolve against our cwd
    resolved = os.path.realpath(path)
    for root in roots:
        if not root.startswith("/"):
            continue  # an unset root ("") must never mean the working directory
        root = os.path.realpath(root)
        if resolved == root or resolved.startswith(root.rstrip("/") + "/"):
            if not os.path.lexists(resolved):
                raise NotFound(f"{path} does not exist")
            return resolved
    raise InvalidInput(f"{path} is outside the paths this agent may measure (the datadir, "
                       "SnapshotMountPoint and AllowedPathRoots)")


class DiskUsage:
    """``du``/``df`` through the runner, with coalescing and a short cache keyed by command and path."""

    def __init__(self, runner: ProcessRunner, clock: Clock, cache_seconds: float = CACHE_SECONDS,
                 stale_seconds: float = STALE_SECONDS):
        self._runner = runner
        self._cache = ShortCache(clock, cache_seconds, stale_seconds)
        self._counters: dict[str, Callable[[], int]] = {}

    async def usage(self, path: str) -> int:
        """Apparent size in bytes of everything under ``path`` (``du -sb``, V1), or, while a seed
        receives into it, the bytes that have arrived (see :meth:`follow`)."""
        counter = self._counters.get(path)
        if counter is not None:
            return counter()
        return await self._cache.get(("du", path), lambda: self._du(path))

    def follow(self, path: str, counter: Callable[[], int]) -> Callable[[], None]:
        """Answer ``path``'s usage from ``counter`` until the returned function is called.

        A receive knows exactly how much has arrived, at no cost; orchestrator's progress (the
        target's ``mysql-du``) then tracks the copy instead of a walk cached from before it.
        """
        self._counters[path] = counter

        def unfollow() -> None:
            if self._counters.get(path) is counter:
                del self._counters[path]
            self.invalidate()
        return unfollow

    async def available(self, path: str) -> int:
        """Bytes available to unprivileged users on ``path``'s file system (df's Available, V1)."""
        return await self._cache.get(("df", path), lambda: self._df(path))

    def invalidate(self) -> None:
        """Forget every value; walks in flight still answer their callers but are not kept."""
        self._cache.invalidate()

    async def _du(self, path: str) -> int:
        # du exits 1 when a file vanished during the walk (a running server's temp files) but
        # still prints the total; only a missing total is a failure.
        result = await self._runner.run(("du", "-sb", path), privileged=True, essential=True, parsed=True,
                                       check=False)
        size = parse_du(result.text())
        if size is None:
            raise CommandFailed(result)
        return size

    async def _df(self, path: str) -> int:
        result = await self._runner.run(("df", "-PT", "-B", "1", path), essential=True, parsed=True)
        available = parse_df(result.text())
        if available is None:
            raise AgentError(f"df printed no usable row for {path}")
        return available
