"""What the seed manager keeps of a running seed, whatever carries its data (the built-in transfer
or a configured command), and how a command-mode receive shows progress: its datadir growing."""

from __future__ import annotations

from typing import Callable

import attrs
from twisted.internet.defer import Deferred, DeferredList

from orchagent.interfaces import Clock, Disk
from orchagent.seed.records import SeedRecord

#: bytes, bytes total, files, files total (None: not known)
Progress = tuple[int, int | None, int, int | None]


@attrs.define
class Growth:
    """A command-mode receive's datadir, measured now and then: its size is the seed's progress,
    and a size that stops changing for ``stall_seconds`` means the command stalled."""

    disk: Disk
    datadir: str
    clock: Clock
    stall_seconds: float
    size: int = -1
    changed_at: float = 0.0

    def __attrs_post_init__(self) -> None:
        self.changed_at = self.clock.seconds()

    async def stalled(self) -> bool:
        """Measure once more; True when nothing changed for ``stall_seconds``."""
        size = await self.disk.usage(self.datadir)
        now = self.clock.seconds()
        if size != self.size:
            self.size, self.changed_at = size, now
            return False
        return now - self.changed_at > self.stall_seconds

    def progress(self) -> Progress:
        return max(self.size, 0), None, 0, None


@attrs.define
class Job:
    """A running seed as the manager sees it."""

    done: Deferred  # fires on success, fails with the reason
    stop: Callable[[], Deferred]  # kill it; fires once nothing of it runs
    progress: Callable[[], Progress]
    wire: Callable[[], tuple[int, int]] = lambda: (0, 0)  # built-in: the stream's bytes on the wire, uncompressed
    resumed: Callable[[], tuple[int, int]] = lambda: (0, 0)  # built-in: resumes after drops, bytes moved again
    started: Callable[[], float | None] = lambda: None  # built-in: when data began to flow (the peers met)
    streams: Callable[[], int | None] = lambda: None  # built-in: its connections (SeedParallelStreams)
    growth: Growth | None = None  # command-mode receive: the datadir whose growth shows progress
    unfollow: Callable[[], None] = lambda: None  # built-in receive: stop answering mysql-du from its count
    limit_rate: Callable[[int], None] | None = None  # built-in send: change its pacing

    def sample(self, record: SeedRecord, now: float) -> None:
        """Copy the live progress into the seed's ``record`` (the API reads it from there)."""
        record.bytes_done, record.bytes_total, record.files_done, record.files_total = self.progress()
        record.wire_bytes, record.data_bytes = self.wire()
        record.resumes, record.resent_bytes = self.resumed()
        record.streams = self.streams()
        if record.data_started_at is None:  # rate and ETA count from when data began to flow
            record.data_started_at = self.started() or (now if record.bytes_done else None)


def transfer_job(transfer, backup=None, on_success: Callable[[], None] = lambda: None) -> Job:
    """A built-in transfer (either side) as a job.

    ``backup``: a hot seed's running backup (:class:`orchagent.seed.hotseed.BackupSource`), killed
    with the transfer and, whatever the outcome, once it ended.  ``on_success`` runs before the
    job reads succeeded.
    """
    def progress() -> Progress:
        p = transfer.progress
        return p.bytes_done, p.bytes_total, p.files_done, p.files_total

    def stop() -> Deferred:
        stopping = [transfer.abort()] + ([backup.abort()] if backup is not None else [])
        return DeferredList(stopping, consumeErrors=True)

    done = transfer.when_done()
    if backup is not None:
        def cleaned(outcome):
            backup.close()  # no reader thread is left: the transfer ended
            return backup.abort().addBoth(lambda _: outcome)
        done.addBoth(cleaned)
    done.addCallback(lambda result: (on_success(), result)[1])
    return Job(done, stop, progress, wire=lambda: (transfer.progress.wire_bytes, transfer.progress.data_bytes),
               started=lambda: transfer.progress.started, streams=lambda: transfer.lanes,
               resumed=lambda: (transfer.progress.resumes, transfer.progress.resent_bytes))


def command_job(running, growth: Growth | None = None) -> Job:
    """A configured command as a job; without ``growth`` its progress is unknown (0)."""
    return Job(running.result, running.terminate, growth.progress if growth else lambda: (0, None, 0, None),
               growth=growth)
