"""The seams between orchagent's objects, as small Protocols.

They document what a constructor needs of a collaborator, so a reader (and a type checker) can
follow a value from a route through a host object to the process runner.  The real objects are
built in :func:`orchagent.service.make_service`; tests pass doubles that fit the same shapes.
Nothing checks them at run time.  Where a handler is the only user of a host object with one
implementation (the snapshots, the replication logs), it names the class itself instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall

if TYPE_CHECKING:  # host and seed modules import this one
    from orchagent.host.snapshots import Mount
    from orchagent.seed.records import SeedRecord

#: ``run(function, *args)`` -> Deferred of its result, in the reactor's thread pool
#: (:func:`orchagent.threads.thread_runner`); one for the whole agent.
ThreadRunner = Callable[..., Deferred]


class Clock(Protocol):
    """The reactor's time (``IReactorTime``): wall-clock seconds and timers; ``task.Clock`` in tests."""

    def seconds(self) -> float: ...

    def callLater(self, delay: float, callable: Callable[..., Any], *args: Any, **kw: Any) -> IDelayedCall: ...


class RunningCommand(Protocol):
    """A long-running command (:class:`orchagent.running.RunningCommand`)."""

    pid: int | None
    result: Deferred  # Deferred[CommandResult]

    def terminate(self) -> Deferred: ...


class ProcessRunner(Protocol):
    """Every OS command (:class:`orchagent.process.ProcessRunner`); results are
    :class:`orchagent.commands.CommandResult`, failures CommandFailed / CommandTimedOut.

    ``options`` as ``ProcessRunner.run`` documents them: ``name``, ``timeout``, ``idle_timeout``,
    ``privileged``, ``essential``, ``parsed``, ``check``, ``stdin_path``, ``stdout_path``,
    ``cwd``, ``env``.
    """

    def run(self, argv: Sequence[str], **options: Any) -> Deferred: ...

    def run_configured(self, command: str, args: Sequence[str] = (), *, name: str, **options: Any) -> Deferred: ...

    def start(self, argv: Sequence[str], **options: Any) -> RunningCommand: ...

    def start_configured(self, command: str, args: Sequence[str] = (), *, name: str,
                         **options: Any) -> RunningCommand: ...


class MySQLServer(Protocol):
    """What storage, seeds and metrics ask of the local server (:class:`orchagent.host.mysql.MySQL`)."""

    async def datadir(self) -> str: ...

    async def port(self) -> int: ...

    async def is_running(self) -> bool: ...

    async def require_stopped(self, action: str) -> None: ...

    async def post_copy(self, source_host: str | None) -> None: ...


class Disk(Protocol):
    """``du``/``df``, cached (:class:`orchagent.host.disk.DiskUsage`)."""

    async def usage(self, path: str) -> int: ...

    async def available(self, path: str) -> int: ...

    def follow(self, path: str, counter: Callable[[], int]) -> Callable[[], None]: ...

    def invalidate(self) -> None: ...


class MountedSnapshot(Protocol):
    """What the seed manager asks of the snapshots (:class:`orchagent.host.snapshots.Snapshots`)."""

    async def current_mount(self) -> Mount: ...


class DatadirEraser(Protocol):
    """Empties the datadir (:class:`orchagent.host.datadir.DatadirEraser`)."""

    async def delete_content(self) -> None: ...

    async def empty(self, expected: str | None = None, *, after_failed_seed: bool = False) -> list[str]: ...


class Seeds(Protocol):
    """The seed manager as the API sees it (:class:`orchagent.seed.manager.SeedManager`)."""

    async def receive(self, seed_id: int) -> None: ...

    async def send(self, target_host: str, seed_id: int) -> None: ...

    async def abort(self, seed_id: int) -> None: ...

    async def post_copy(self, source_host: str | None) -> None: ...

    def record(self, seed_id: int) -> SeedRecord: ...

    def records(self, limit: int | None = None) -> list[SeedRecord]: ...

    def now(self) -> float: ...

