"""Stand-ins for the storage layer's collaborators: MySQL as storage and seeds see it, and work "on a thread"."""

from __future__ import annotations

from twisted.internet.defer import maybeDeferred

from orchagent.errors import AgentError, Conflict


class StubMySQL:
    """What storage and seeds ask of ``orchagent.host.mysql.MySQL``: the datadir and whether it runs."""

    def __init__(self, datadir: str | None, running: bool = False):
        self.data_directory = datadir
        self.running = running

    async def datadir(self) -> str:
        if self.data_directory is None:
            raise AgentError("cannot tell where MySQL keeps its data (stand-in)")
        return self.data_directory

    async def is_running(self) -> bool:
        return self.running

    async def require_stopped(self, action: str) -> None:
        if self.running:
            raise Conflict(f"refusing to {action}: MySQL is running (stand-in)")


def sync_thread(function, *args):
    """``defer_to_thread`` for unit tests: run at once, on this thread."""
    return maybeDeferred(function, *args)
