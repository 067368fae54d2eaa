"""Runs seeds in the background and answers orchestrator's questions about them.

Orchestrator (contract B.2) asks the target to receive, the source to send, then polls only the
target's ``seed-command-completed`` / ``-succeeded`` and ``mysql-du``.  So:

* the target knows when its copy ended and whether it was whole (the built-in transfer verifies
  every file; in command mode the receive command's exit status decides);
* ``abort-seed`` kills everything of the seed before answering, then reports completed and not
  succeeded ("Our rules" 7), and a later success cannot flip that back;
* a receive that did not succeed leaves an empty datadir behind, never a partial one that
  MySQL could start on, and ``post-copy`` refuses to run after it;
* records are persisted, and a seed that was running when the agent died is failed at start;
* one receive at a time per datadir, and a failed receive empties the datadir only while it
  still holds that seed's partial data (:mod:`orchagent.seed.datadirs`);
* a built-in send is paced at ``SeedMaxBytesPerSecond``, changed for the running seed by
  :meth:`SeedManager.throttle` (the source paces: that is whose disk and network it protects).
"""

from __future__ import annotations

from typing import Any, Callable

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, DeferredLock
from twisted.internet.task import LoopingCall

from orchagent import logs, tls
from orchagent.config import Config
from orchagent.errors import Busy, Conflict, InvalidInput, NotFound
from orchagent.host.datadir import checked_datadir
from orchagent.interfaces import DatadirEraser, Disk, MountedSnapshot, MySQLServer, ProcessRunner, ThreadRunner
from orchagent.seed.aftercopy import AfterCopy
from orchagent.seed.datadirs import DatadirHolders
from orchagent.seed.records import ABORTED, COMPLETE, FAILED, PARTIAL, RUNNING, SUCCEEDED, SeedRecord, SeedStore
from orchagent.seed.jobs import Growth, Job, command_job, transfer_job
from orchagent.seed.hotseed import BackupSource, Extractor
from orchagent.seed.listener import SeedListener, require_authentication
from orchagent.seed.lanes import lane_count
from orchagent.seed.sender import send_tree
from orchagent.seed.throttle import minimum_rate

log = logs.logger(__name__)

TICK_SECONDS = 2  # how often progress is sampled and stalls are checked
SAVE_EVERY_TICKS = 5  # progress reaches the disk every 10 s (state changes at once)
BUSY_RETRY_SECONDS = 60  # Retry-After of a seed refused because MaxConcurrentSeeds run


class SeedManager(Service):
    def __init__(self, *, config: Config, reactor, mysql: MySQLServer, snapshots: MountedSnapshot,
                 eraser: DatadirEraser, disk: Disk, runner: ProcessRunner, store: SeedStore,
                 defer_to_thread: ThreadRunner, send: Callable[..., Any] = send_tree, replication=None):
        """``reactor``: time and timers, and the seed listener's endpoints.  ``replication``: an
        :class:`orchagent.host.replication.ReplicationSetup`, for SeedStartReplication."""
        self._config = config
        self._reactor = reactor
        self._mysql = mysql
        self._snapshots = snapshots
        self._disk = disk
        self._runner = runner
        self._store = store
        self._send = send
        self._defer_to_thread = defer_to_thread
        self._records: dict[int, SeedRecord] = {}
        self._jobs: dict[int, Job] = {}
        self._listener = SeedListener(config, reactor)
        self._ticks = 0
        self._save_lock = DeferredLock()
        self._datadirs = DatadirHolders(
            lambda holders: self._save_lock.run(self._defer_to_thread, self._store.save_holders, holders),
            eraser=eraser)
        self._after_copy = AfterCopy(config=config, mysql=mysql, datadirs=self._datadirs,
                                     records=lambda: self._records, save=self._save, replication=replication)
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = reactor

    # --- life cycle -----------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._records = self._store.load_all()
        self._datadirs.load(self._store.load_holders(), self._records.values())
        for record in self._records.values():
            if record.state == RUNNING:
                record.end(FAILED, "the agent stopped while this seed was running", self.now())
                self._store.save(record)
                log.warn("seed {seed_id} was running when the agent stopped: marked failed", seed_id=record.seed_id)
                if record.role == "receive" and self._datadirs.holds_partial(record.path, record.seed_id):
                    self._datadirs.reserve(record.path, record.seed_id)  # no new receive until it is cleared
                    Deferred.fromCoroutine(self._datadirs.clear_after_restart(record))
        self._ticker.start(TICK_SECONDS, now=False).addErrback(
            lambda f: log.failure("seed progress ticker stopped", f))

    def stopService(self) -> Deferred:
        """Kill running seeds; their records stay "running" so the next start fails and clears them."""
        super().stopService()
        if self._ticker.running:
            self._ticker.stop()
        jobs, self._jobs = list(self._jobs.values()), {}
        stopping = [job.stop() for job in jobs]
        stopping.append(self._listener.close())
        return DeferredList(stopping, consumeErrors=True)

    # --- what the API asks ----------------------------------------------------------------

    async def receive(self, seed_id: int) -> None:
        """Arm a receive into the datadir (emptied beforehand by orchestrator)."""
        self._refuse_reuse(seed_id)
        self._refuse_when_full(seed_id)
        await self._mysql.require_stopped("receive a seed into the datadir")
        # the guard of delete-mysql-datadir: receiving into /etc would be as bad as emptying it
        datadir = await self._defer_to_thread(checked_datadir, await self._mysql.datadir())
        self._datadirs.refuse_second_receive(datadir)
        port = self._config.seed_transfer_port
        receiver = None if self._config.receive_seed_data_command else await self._listener.server()
        before = 0 if receiver is None else await self._usage_or_zero(datadir)
        self._refuse_reuse(seed_id)  # again after the last await: a concurrent request may have come in
        self._refuse_when_full(seed_id)
        self._datadirs.refuse_second_receive(datadir)
        if receiver is None:
            running = self._runner.start_configured(
                self._config.receive_seed_data_command, (datadir, str(port)),
                name="ReceiveSeedDataCommand", timeout=None)
            job = command_job(running, Growth(self._disk, datadir, self._reactor,
                                              self._config.seed_stall_timeout_seconds))
            mode = "command"
        else:
            extractor = Extractor.configured(self._config, self._reactor, self._runner, self._defer_to_thread)
            transfer = receiver.arm(str(seed_id), datadir, extractor)
            job = transfer_job(transfer, on_success=lambda: extractor.note_coordinates(self._records[seed_id]))
            # mysql-du counts on from what du saw, so it never drops when the walk takes over again
            job.unfollow = self._disk.follow(datadir, lambda: before + transfer.progress.bytes_done)
            mode = "built-in"
        holder_saved = self._datadirs.start_receive(datadir, seed_id)  # saved before the record, so before any data
        try:
            await self._begin(SeedRecord(seed_id, "receive", mode, "", datadir, self.now()), job)
        finally:
            await holder_saved

    async def send(self, target_host: str, seed_id: int) -> None:
        """Send the mounted snapshot's datadir (or the stopped datadir) to ``target_host``."""
        self._refuse_reuse(seed_id)
        self._refuse_when_full(seed_id)
        source, hot = await self._source_directory()
        self._refuse_reuse(seed_id)  # again after the last await, as in receive
        self._refuse_when_full(seed_id)
        port = self._config.seed_transfer_port
        rate = None
        if hot and self._config.send_seed_data_command:
            raise Conflict("a hot-backup volume is sent only by the built-in transfer (the backup tool's stream): "
                           "unset SendSeedDataCommand, or seed from a snapshot")
        if self._config.send_seed_data_command:
            running = self._runner.start_configured(
                self._config.send_seed_data_command, (source, target_host, str(port)),
                name="SendSeedDataCommand", timeout=None,
                # silence means a stall only for a command that reports progress (SendSeedDataIdleTimeoutSeconds)
                idle_timeout=self._config.send_seed_data_idle_timeout_seconds or None)
            job = command_job(running)
            mode = "command"
        else:
            require_authentication(self._config)
            rate = self._config.seed_max_bytes_per_second
            backup = await BackupSource.start(self._config, self._reactor, self._runner, self._mysql, source,
                                              self._defer_to_thread) if hot else None
            try:
                transfer = self._send(
                    self._reactor, target_host, port, str(seed_id), source,
                    secret=self._config.seed_transfer_secret.encode(),
                    tls=tls.client_creator(self._config, target_host) if self._config.use_ssl else None,
                    stall_timeout=self._config.seed_stall_timeout_seconds, max_bytes_per_second=rate,
                    compression=self._config.seed_compression, backup=backup,
                    streams=lane_count(self._config.seed_parallel_streams, hot))
            except BaseException:
                if backup is not None:  # nothing reads it: kill it
                    backup.close()
                    await backup.abort()
                raise
            job = transfer_job(transfer, backup)
            job.limit_rate = transfer.limit_rate
            mode = "built-in"
        await self._begin(SeedRecord(seed_id, "send", mode, target_host, source, self.now(),
                                     max_bytes_per_second=rate), job)

    async def abort(self, seed_id: int) -> None:
        """Kill whatever runs for the seed and wait for it; afterwards it reads completed, failed."""
        record = self._record(seed_id)
        if seed_id in self._jobs:
            await self._end(seed_id, ABORTED, "aborted on request")
        elif record.state == SUCCEEDED:
            record.end(ABORTED, "aborted on request after it had completed", self.now())
            await self._save(record)

    async def throttle(self, seed_id: int, max_bytes_per_second: int) -> None:
        """Pace a running built-in send at ``max_bytes_per_second`` from now on (0: no limit)."""
        record = self._record(seed_id)
        job = self._jobs.get(seed_id)
        if job is None or job.limit_rate is None:
            if job is None:
                what = record.state
            elif record.role == "receive":
                what = "a receive here: the source paces the transfer, throttle it on the source's agent"
            else:
                what = "a command-mode send (SendSeedDataCommand paces itself)"
            raise Conflict(f"seed {seed_id} cannot be throttled: it is {what}; only a running built-in send can")
        minimum = minimum_rate(self._config.seed_stall_timeout_seconds, lane_count(self._config.seed_parallel_streams))
        if 0 < max_bytes_per_second < minimum:
            raise InvalidInput(f"bytesPerSecond must be 0 (no limit) or at least {minimum}: slower, the pauses "
                               f"between a stream's 1 MB batches come near SeedStallTimeoutSeconds "
                               f"({self._config.seed_stall_timeout_seconds} s), got {max_bytes_per_second}")
        job.limit_rate(max_bytes_per_second)
        record.max_bytes_per_second = max_bytes_per_second
        log.info("seed {seed_id}: send throttled to {rate} bytes per second (0: no limit)",
                 seed_id=seed_id, rate=max_bytes_per_second)
        await self._save(record)

    def record(self, seed_id: int) -> SeedRecord:
        """The seed's record with live progress (404 when this agent never heard of it)."""
        record = self._record(seed_id)
        self._sample(seed_id)
        return record

    def records(self, limit: int | None = None) -> list[SeedRecord]:
        """The seeds this agent knows, newest first (at most ``limit``), running ones with live progress."""
        for seed_id in list(self._jobs):
            self._sample(seed_id)
        return sorted(self._records.values(), key=lambda r: r.started_at, reverse=True)[:limit]

    def now(self) -> float:
        """The wall time seed records are kept in."""
        return self._reactor.seconds()

    async def check_post_copy(self, source_host: str | None = None) -> None:
        """``post-copy`` must not prepare a datadir unless the seed whose data it holds arrived whole."""
        await self._after_copy.check(source_host)

    async def start_replication(self) -> None:
        """After ``mysql-start`` (SeedStartReplication): see :meth:`AfterCopy.start_replication`."""
        await self._after_copy.start_replication()

    async def post_copy(self, source_host: str | None) -> None:
        """MySQL's ``PostCopyCommand``, once :meth:`check_post_copy` agrees."""
        await self.check_post_copy(source_host)
        await self._mysql.post_copy(source_host)

    # --- what the datadir eraser asks (DatadirWatcher) ---------------------------------------

    def refuse_emptying(self, datadir: str) -> None:
        """Never empty a datadir under a running receive (its own cleanup runs after it ended)."""
        for seed_id in self._jobs:
            record = self._records[seed_id]
            if record.role == "receive" and record.path == datadir:
                raise Conflict(f"seed {seed_id} is receiving into the datadir {datadir}: abort it first "
                               f"(abort-seed/{seed_id})")

    async def emptied(self, datadir: str) -> None:
        """The datadir holds no seed's data any more: ``post-copy`` must not pass on it."""
        await self._datadirs.emptied(datadir)

    # --- internals ------------------------------------------------------------------------

    def _record(self, seed_id: int) -> SeedRecord:
        record = self._records.get(seed_id)
        if record is None:
            raise NotFound(f"no seed {seed_id} on this agent")
        return record

    def _refuse_reuse(self, seed_id: int) -> None:
        record = self._records.get(seed_id)
        if record is not None:
            raise Conflict(f"seed {seed_id} already exists here ({record.role}, {record.state}); "
                           f"seed ids are not reused")

    def _refuse_when_full(self, seed_id: int) -> None:
        """Each seed costs threads, buffers and sockets: beyond MaxConcurrentSeeds, 503."""
        if len(self._jobs) >= self._config.max_concurrent_seeds:
            raise Busy(f"seed {seed_id} not started: {len(self._jobs)} seeds are running, as many as "
                       f"MaxConcurrentSeeds allows; retry when one has ended", BUSY_RETRY_SECONDS)

    async def _usage_or_zero(self, path: str) -> int:
        try:
            return await self._disk.usage(path)
        except Exception as e:
            log.warn("cannot measure {path} before the receive: {error}", path=path, error=e)
            return 0

    async def _release_receiver(self) -> None:
        if not any(r.role == "receive" and r.mode == "built-in" for r in self._active_records()):
            await self._listener.close()

    def _active_records(self) -> list[SeedRecord]:
        return [self._records[seed_id] for seed_id in self._jobs]

    async def _source_directory(self) -> tuple[str, bool]:
        """What a send copies, and whether it is a hot backup of it (the backup tool's stream)."""
        mount = await self._snapshots.current_mount()
        if mount.virtual:
            return mount.mysql_data_path, True
        if mount.is_mounted:
            if not mount.mysql_data_path:
                raise Conflict(f"a snapshot is mounted at {mount.path} but no MySQL datadir was found in it")
            return mount.mysql_data_path, False
        await self._mysql.require_stopped("send the datadir itself (no snapshot is mounted at "
                                          "SnapshotMountPoint; mount one with mountlv, or stop MySQL)")
        return await self._mysql.datadir(), False

    def _begin(self, record: SeedRecord, job: Job) -> Deferred:
        """Track the job; the Deferred fires once its record is on disk, and the route answers only
        then, so orchestrator (which sends only after the receive answered) never has data flow
        for a seed that an agent killed a moment later would not know after its restart."""
        self._records[record.seed_id] = record
        self._jobs[record.seed_id] = job
        saved = self._save(record)
        log.info("seed {seed_id}: {role} started ({mode}, {path})", seed_id=record.seed_id,
                 role=record.role, mode=record.mode, path=record.path)
        Deferred.fromCoroutine(self._supervise(record, job))
        return saved

    async def _supervise(self, record: SeedRecord, job: Job) -> None:
        try:
            await job.done
            outcome, error = SUCCEEDED, ""
        except Exception as e:
            outcome, error = FAILED, str(e) or type(e).__name__
        if self._jobs.get(record.seed_id) is job:  # not already ended by abort or shutdown
            await self._end(record.seed_id, outcome, error)

    async def _end(self, seed_id: int, state: str, error: str) -> None:
        """Stop the job if it still runs, clear a partial copy, then record the outcome.

        The seed reads completed only once nothing of it runs and no partial copy is left.
        """
        record = self._records[seed_id]
        self._sample(seed_id)
        job = self._jobs.pop(seed_id)
        job.unfollow()
        if not job.done.called:
            await job.stop()
        if record.role == "receive":
            try:
                if state == SUCCEEDED:
                    await self._datadirs.mark(record.path, record.seed_id, PARTIAL, COMPLETE)
                else:
                    await self._datadirs.clear_partial_copy(record)
            finally:
                self._datadirs.release(record.path, record.seed_id)
        self._disk.invalidate()
        record.end(state, error, self.now())
        await self._save(record)
        await self._release_receiver()
        (log.info if state == SUCCEEDED else log.warn)(
            "seed {seed_id}: {role} {state}{detail}", seed_id=seed_id, role=record.role, state=state,
            detail=f": {error}" if error else "")

    def _tick(self) -> Deferred:
        """Sample progress, catch stalled command-mode receives, persist now and then."""
        self._ticks += 1
        checks = [Deferred.fromCoroutine(self._check_growth(seed_id, job))
                  for seed_id, job in list(self._jobs.items()) if job.growth]
        for seed_id in list(self._jobs):
            self._sample(seed_id)
            if self._ticks % SAVE_EVERY_TICKS == 0:
                checks.append(self._save(self._records[seed_id]))
        d = DeferredList(checks, consumeErrors=True)
        d.addCallback(lambda results: [log.failure("seed progress check failed", f)
                                       for ok, f in results if not ok])
        return d

    async def _check_growth(self, seed_id: int, job: Job) -> None:
        if await job.growth.stalled() and self._jobs.get(seed_id) is job:
            await self._end(seed_id, FAILED, f"stalled: the datadir did not grow for "
                            f"{self._config.seed_stall_timeout_seconds} s (SeedStallTimeoutSeconds)")

    def _sample(self, seed_id: int) -> None:
        job = self._jobs.get(seed_id)
        if job is not None:
            job.sample(self._records[seed_id], self.now())

    def _save(self, record: SeedRecord) -> Deferred:
        """Persist a copy of the record now, in a thread; saves reach the disk in call order."""
        snapshot = attrs.evolve(record)
        return self._save_lock.run(self._defer_to_thread, self._store.save, snapshot)

