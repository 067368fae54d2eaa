"""The two ends of a hot seed (``SnapshotBackend: "hotbackup"`` on the source), around the transfer.

The source's backup tool streams into the sender (:func:`orchagent.host.hotbackup.start_backup`);
on the target, :class:`Extractor` unpacks the stream into the staging tree as it arrives, then
prepares the copy and reads where it stands in the source's binary log.  The extractor is driven
from the receiver's disk thread; the tools are started and awaited in the reactor.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.threads import blockingCallFromThread

from orchagent.errors import AgentError
from orchagent.host.hotbackup import BinlogPosition, Tool, ToolStream, prepare_copy, start_extract
from orchagent.seed.protocol import TransferFailed


class BackupSource:
    """The source's side: a running backup (:func:`~orchagent.host.hotbackup.start_backup`) for the
    sender's reader thread, with the source's MySQL port for the target's replication."""

    def __init__(self, reactor: Any, backup: ToolStream, port: int) -> None:
        self._reactor = reactor
        self._backup = backup
        self.port = port

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

    def prepare(self, directory: str, directory_fd: int) -> None:
        """Prepare the unpacked copy (a damaged one fails here) and note its binlog coordinates."""
        self.position = self._in_reactor(lambda: Deferred.fromCoroutine(prepare_copy(
            self._runner, self._tool, directory, self._memory_mb, self._defer_to_thread, timeout=None,
            directory_fd=directory_fd)))

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
