"""The two ends of a hot seed (``SnapshotBackend: "hotbackup"`` on the source), around the transfer.

The source's backup tool streams into the sender (:func:`orchagent.host.toolstreams.start_backup`);
on the target, :class:`Extractor` unpacks the stream into the staging tree as it arrives, then
prepares the copy, reads where it stands in the source's binary log and gives it to the datadir's
owner.  The extractor is driven from the receiver's disk thread; the tools are started and awaited
in the reactor.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.threads import blockingCallFromThread

from orchagent import logs
from orchagent.config import Config
from orchagent.errors import AgentError
from orchagent.host.hotbackup import TOOLS, BinlogPosition, Tool, check_private_file, prepare_copy
from orchagent.host.toolstreams import ToolStream, start_backup, start_extract
from orchagent.seed.protocol import TransferFailed
from orchagent.seed.records import SeedRecord
from orchagent.seed.staging import open_own_directory

log = logs.logger(__name__)


class BackupSource:
    """The source's side: a running backup (:func:`~orchagent.host.toolstreams.start_backup`) for the
    sender's reader thread, with the source's MySQL port for the target's replication."""

    def __init__(self, reactor: Any, backup: ToolStream, port: int) -> None:
        self._reactor = reactor
        self._backup = backup
        self.port = port

    @classmethod
    async def start(cls, config: Config, reactor: Any, runner: Any, mysql: Any, datadir: str,
                    defer_to_thread: Callable) -> "BackupSource":
        """The backup of ``datadir``'s server as ``config`` says, streaming; stalls show as the tool's
        silence (SeedStallTimeoutSeconds)."""
        defaults_file = config.hot_backup_defaults_file
        await defer_to_thread(check_private_file, defaults_file, "HotBackupDefaultsFile")
        port = await mysql.port()
        backup = await start_backup(runner, TOOLS[config.hot_backup_tool], defaults_file, datadir, defer_to_thread,
                                    idle_timeout=config.seed_stall_timeout_seconds)
        return cls(reactor, backup, port)

    @property
    def fd(self) -> int:
        return self._backup.fd

    def ended(self) -> None:
        """Reader thread, at the end of the stream: raise unless the backup succeeded."""
        try:
            blockingCallFromThread(self._reactor, lambda: Deferred.fromCoroutine(self._backup.finished()))
        except AgentError as e:
            raise TransferFailed(str(e)) from None

    def close(self) -> None:
        self._backup.close()

    def abort(self) -> Deferred:
        """Reactor: kill the backup's process group (its reader then sees the end of the stream)."""
        return Deferred.fromCoroutine(self._backup.abort())


class Extractor:
    """Unpacks one hot seed's stream into a directory (blocking; for the receiver's disk thread)."""

    def __init__(self, reactor: Any, runner: Any, tool: Tool, prepare_memory_mb: int,
                 defer_to_thread: Callable) -> None:
        self._reactor = reactor
        self._runner = runner
        self._tool = tool
        self._memory_mb = prepare_memory_mb
        self._defer_to_thread = defer_to_thread
        self._tool_stream: ToolStream | None = None
        self.source_port: int | None = None  # the source's MySQL port, from the stream
        self.position: BinlogPosition | None = None  # once prepared: the backup's binlog coordinates

    @classmethod
    def configured(cls, config: Config, reactor: Any, runner: Any, defer_to_thread: Callable) -> "Extractor":
        """The extractor of ``config``'s HotBackupTool, preparing with HotBackupPrepareMemoryMB."""
        return cls(reactor, runner, TOOLS[config.hot_backup_tool], config.hot_backup_prepare_memory_mb,
                   defer_to_thread)

    def start(self, directory: str, source_port: int) -> None:
        self.source_port = source_port
        self._tool_stream = self._in_reactor(lambda: start_extract(self._runner, self._tool, directory,
                                                                   self._defer_to_thread))

    def write(self, piece: memoryview) -> None:
        """Hand the extractor the next piece of the stream (waits while it is busy: the backpressure)."""
        while piece:
            try:
                written = os.write(self._tool_stream.fd, piece)
            except BrokenPipeError:
                self.end()  # it stopped reading: its own error says why
                raise TransferFailed(f"{self._tool.extractor} -x stopped reading the stream") from None
            piece = piece[written:]

    def end(self) -> None:
        """The stream is whole: close the extractor's input and wait for it to have unpacked everything."""
        self._tool_stream.close()
        self._in_reactor(lambda: Deferred.fromCoroutine(self._tool_stream.finished()))

    def prepare(self, directory: str, directory_fd: int, owner: tuple[int, int] | None) -> None:
        """Prepare the unpacked copy (a damaged one fails here), note its binlog coordinates and
        give the copy to ``owner`` (None: it stays the agent's)."""
        self.position = self._in_reactor(lambda: Deferred.fromCoroutine(prepare_copy(
            self._runner, self._tool, directory, self._memory_mb, self._defer_to_thread, timeout=None,
            directory_fd=directory_fd)))
        if owner is not None:
            _give_to(directory_fd, owner)

    def note_coordinates(self, record: SeedRecord) -> None:
        """Reactor, once the seed arrived: where the target's replication will start (AfterCopy)."""
        if self.source_port is None:
            return  # a snapshot's tree: no exact coordinates
        record.source_port = self.source_port
        if self.position is not None:
            record.binlog_file, record.binlog_position, record.gtid = (self.position.file, self.position.position,
                                                                       self.position.gtid)
        log.info("seed {seed_id}: hot seed prepared; source MySQL port {port}, binlog {position}",
                 seed_id=record.seed_id, port=self.source_port, position=self.position)

    def abort(self) -> None:
        """After a failure: the extractor, if it still runs, is killed."""
        if self._tool_stream is not None:
            self._tool_stream.close()
            self._in_reactor(lambda: Deferred.fromCoroutine(self._tool_stream.abort()))

    def _in_reactor(self, call: Callable[[], Any]) -> Any:
        try:
            return blockingCallFromThread(self._reactor, call)
        except AgentError as e:
            raise TransferFailed(str(e)) from None


def _give_to(fd: int, owner: tuple[int, int]) -> None:
    """Give everything below the directory ``fd`` (an extracted hot seed, all the agent's and closed to
    others) to ``owner``, following no link; each directory after its contents."""
    for entry in list(os.scandir(fd)):
        if entry.is_dir(follow_symlinks=False):
            child = open_own_directory(entry.name, fd)
            try:
                _give_to(child, owner)
                os.fchown(child, *owner)
            finally:
                os.close(child)
        else:
            os.chown(entry.name, *owner, dir_fd=fd, follow_symlinks=False)
