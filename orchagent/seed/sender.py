"""The sending side of the built-in seed transfer.

    transfer = send_tree(reactor, "target-host", 21234, "42", "/mnt/snap/mysql", secret=b"...")

Once the receiver accepted the connection (:mod:`orchagent.seed.senderprotocol`), a reader thread
walks, reads and MACs the source into a bounded pipe; a sending thread takes it to the socket
(:mod:`orchagent.seed.channel`; under TLS it also encrypts, :mod:`orchagent.seed.tlschannel`),
paced by the seed's :class:`~orchagent.seed.throttle.Throttle` (``SeedMaxBytesPerSecond``, changed
on the fly by :meth:`limit_rate`).  The transfer succeeds only
with the receiver's authenticated DONE.
When the connection drops, or carries nothing for half of ``stall_timeout`` (a stall,
:func:`~orchagent.seed.resumption.silence_limit`), the sender drops it, reconnects (backing off)
until ``stall_timeout`` seconds after the drop (after the link went silent, for a stall) and
continues where the receiver's RESUME says (:mod:`orchagent.seed.resumption`); a hot seed's backup
stream cannot be sent again, so a drop fails it, and a stall after the whole ``stall_timeout``.
With ``SeedParallelStreams`` above 1 a seed goes over several such transfers, one per lane
(:mod:`orchagent.seed.lanes`).
"""

from __future__ import annotations

import socket
import time
from typing import Any, Callable

from twisted.internet import interfaces
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.python.failure import Failure

from orchagent import logs
from orchagent.seed import authentication
from orchagent.seed.channel import SocketChannel, Stalled
from orchagent.seed.pipe import Pipe
from orchagent.seed.protocol import Part, TransferFailed
from orchagent.seed.hotseed import BackupSource
from orchagent.seed.lanes import Plan, SendLanes
from orchagent.seed.reader import WHOLE, Batch, StreamReader, TreeReader
from orchagent.seed.resumption import ResumePoint, reconnect_delay
from orchagent.seed.senderprotocol import SenderProtocol
from orchagent.seed.throttle import Throttle
from orchagent.seed.transfer import PIPE_BYTES, Transfer

log = logs.logger(__name__)

CONNECT_TIMEOUT_SECONDS = 30
MIN_PIPE_BYTES = 2 * 1024 * 1024  # a lane's pipe, at least: a few batches ahead of its socket


class _SendTransfer(Transfer):
    """One connection's worth of a send (a lane): its reader and sending threads, and after a drop
    the reconnections (its :class:`~orchagent.seed.senderprotocol.SenderProtocol` speaks to the receiver)."""

    _loss_told = True  # by SenderProtocol: the receiver's FAIL frame, or connection_lost

    def __init__(self, reactor: Any, seed_id: str, source_dir: str, secret: bytes, stall_timeout: float,
                 throttle: Throttle, compression: str, backup: BackupSource | None, lane: int = 0, lanes: int = 1,
                 carries: Callable[[bytes], tuple[Part | None, ...]] = lambda _: WHOLE) -> None:
        """``lane`` of ``lanes``: the connection of the seed this is, carrying the files it ``carries``."""
        super().__init__(reactor, seed_id, "send", stall_timeout)
        self.source_dir = source_dir
        self._backup = backup
        self._secret = secret
        self._compression = compression
        self._lane, self._lanes, self._carries = lane, lanes, carries
        self._connecting: Deferred | None = None
        self._throttle = throttle
        self._endpoint: Any = None
        self._where = ""
        self._accepted_once = False  # from then on a dropped connection is resumed
        self._dropping = False  # the current connection dropped; its workers are being stopped
        self._deadline: Any = None  # gives up reconnecting (_give_up)
        self._silent_for = 0.0  # the dropped connection had carried nothing this long (0: it closed)
        self._attempts = 0
        self._next_attempt: Any = None
        self._last_problem = ""
        if backup is not None:
            self._silence = stall_timeout  # nothing resumes it: dropping a silent connection early would fail it

    @property
    def lanes(self) -> int:
        """The connections of the seed this transfer is one of."""
        return self._lanes

    @property
    def lane_name(self) -> str:
        """How logs name this lane ("" when the seed has one)."""
        return f" (stream {self._lane + 1} of {self._lanes})" if self._lanes > 1 else ""

    @property
    def max_bytes_per_second(self) -> int:
        """The pacing in force (0: none)."""
        return self._throttle.rate

    def limit_rate(self, max_bytes_per_second: int) -> None:
        """Reactor: pace the rest of the transfer at ``max_bytes_per_second`` (0: no limit)."""
        self._throttle.set_rate(max_bytes_per_second)  # wakes a waiting sending thread

    def connect(self, endpoint: interfaces.IStreamClientEndpoint, where: str) -> None:
        """Connect (and, after a drop, reconnect) to the receiver at ``endpoint``."""
        self._endpoint, self._where = endpoint, where
        self._connect()

    def _connect(self) -> None:
        self._next_attempt = None
        self._connecting = connectProtocol(self._endpoint, SenderProtocol(self, self._reactor, self._silence))

        def failed(failure: Failure) -> None:
            self._connecting = None
            problem = f"cannot connect to the seed receiver at {self._where}: {failure.getErrorMessage()}"
            if self._accepted_once:
                self.attempt_failed(problem)
            elif not self.concluded:
                self.conclude(TransferFailed(problem))

        def connected(_: Any) -> None:
            self._connecting = None

        self._connecting.addCallbacks(connected, failed)

    def session(self, receiver_nonce: bytes, sender_nonce: bytes, tls_material: bytes) -> authentication.Session:
        """This transfer's session with the receiver that sent ``receiver_nonce``."""
        return authentication.Session.derive(self._secret, self.seed_id, receiver_nonce, sender_nonce, tls_material,
                                             self._lane, self._lanes)

    def authenticated(self, connection: SenderProtocol, mac: authentication.StreamMac, point: ResumePoint) -> None:
        """The receiver accepted ``connection`` and said where to begin: start this connection's workers."""
        if not self._accepted_once:
            self._accepted_once = True
            self._begin()
        else:
            self._resumed(point)
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._pipe = Pipe(max(PIPE_BYTES // self._lanes, MIN_PIPE_BYTES))  # the seed's memory, split between lanes
        self._start_worker(self._read, mac, point)
        stalled = f"seed {self.seed_id} stalled: the receiver did not take data for {self._silence:g} seconds"
        self._open_channel(connection, socket.SHUT_RDWR, stalled,
                           lambda channel: self._start_worker(self._send, channel))

    def _resumed(self, point: ResumePoint) -> None:
        """Progress back to what the receiver verified; what was sent past it counts as sent again."""
        progress = self.progress
        resent = max(progress.bytes_done - point.nbytes, 0)
        progress.resumes += 1
        progress.resent_bytes += resent
        progress.bytes_done, progress.files_done = point.nbytes, point.files
        self.state = "running"
        log.info("seed {seed_id}: reconnected; resuming after {files} files and {nbytes} bytes the receiver "
                 "verified ({resent} bytes sent again)", seed_id=self.seed_id, files=point.files,
                 nbytes=point.nbytes, resent=resent)

    def _read(self, mac: authentication.StreamMac, point: ResumePoint) -> None:
        """Reader thread: walk, read and MAC the source into the pipe, a few MB ahead of the socket."""
        # for room in the pipe: how far the link is the limit (SeedCompression auto); a duration this
        # thread measures of its own blocking, not a time kept anywhere, so not the reactor's clock
        waited = 0.0
        if self._backup is None:
            reader = TreeReader(self.source_dir, mac, compression=self._compression, waited=lambda: waited,
                                resume=point, carries=self._carries, lanes=self._lanes)
        else:
            reader = StreamReader(self._backup.fd, self._backup.port, mac, self._backup.ended,
                                  compression=self._compression, waited=lambda: waited)
        batches = reader.batches()
        try:
            for batch in batches:
                started = time.monotonic()
                self._pipe.put_wait(batch, batch.size)
                waited += time.monotonic() - started
        finally:
            batches.close()  # an abort: the compressing threads stop now, not when the generator is collected
            self._pipe.finish()
            if self._backup is not None:
                self._backup.close()

    def _send(self, channel: SocketChannel) -> None:
        """Sending thread: from the pipe straight onto the socket; the channel goes back to the
        reactor when this ends (to read the receiver's DONE, or why it failed)."""
        try:
            while (batch := self._pipe.get_wait()) is not None:
                self._throttle.take(batch.size, lambda: self._dropping)
                self._count(batch)
                channel.send(batch.parts)
        finally:
            self._reactor.callFromThread(self._release_channel)

    def _count(self, batch: Batch) -> None:
        """Progress of what was handed to the socket (one thread per transfer does this)."""
        self.progress.bytes_done += batch.data_bytes
        self.progress.files_done += batch.files
        self.progress.wire_bytes += batch.size
        self.progress.data_bytes += batch.size + batch.saved
        if batch.totals is not None:
            self.progress.files_total, self.progress.bytes_total = batch.totals
        if batch.final:
            self.state = "finishing"  # from here on the receiver's DONE is due

    def _worker_succeeded(self) -> None:
        pass  # everything is queued; success comes with the receiver's DONE

    # a dropped connection

    @property
    def reconnecting(self) -> bool:
        """A connection was accepted before: the one being set up now resumes the seed."""
        return self._accepted_once

    def connection_lost(self, connection: SenderProtocol, reason: str) -> None:
        """Reactor: ``connection`` is gone; resume when it was the accepted one and may be resumed."""
        if connection is not self._connection:
            return
        self.connection_closed()
        if self.concluded or self._dropping:
            self._reconnect_when_idle()
            return
        if not connection.accepted:
            if self._accepted_once:
                self.attempt_failed(f"the connection to the receiver was lost during the handshake ({reason})")
            else:
                self.conclude(TransferFailed(f"seed {self.seed_id}: the connection to the receiver was lost "
                                             f"before it confirmed the seed ({reason})"))
        elif self._backup is not None:
            self.conclude(TransferFailed(f"seed {self.seed_id}: the connection to the receiver was lost ({reason}); "
                                         "a hot seed's backup stream cannot be sent again: start the seed anew"))
        else:
            self._drop(reason)

    def stalled(self, connection: SenderProtocol) -> None:
        """Reactor: the accepted ``connection`` carried nothing (no keepalive, no DONE) for the silence limit."""
        if connection is self._connection:
            self._stall(TransferFailed(f"seed {self.seed_id} stalled: the receiver did not answer for "
                                       f"{self._silence:g} seconds"))

    def _stall(self, error: TransferFailed) -> None:
        """The connection stalled: drop it and resume, or fail with ``error`` when nothing can resume."""
        if self._backup is not None or self.concluded:
            self.conclude(error)
        elif not self._dropping:
            self._drop(f"it carried nothing for {self._silence:g} s", silent=self._silence)

    def _drop(self, reason: str, silent: float = 0.0) -> None:
        """The accepted connection dropped or stalled (``silent`` seconds without data; the reactor or
        the sending thread noticed): stop its workers and the connection, then reconnect until
        ``stall_timeout`` seconds after the link stopped moving."""
        log.warn("seed {seed_id}: the connection to the receiver dropped ({reason}); reconnecting for up to "
                 "{seconds:g} s", seed_id=self.seed_id, reason=reason, seconds=self._stall_timeout - silent)
        self._dropping = True
        self._silent_for = silent
        self._deadline = self._reactor.callLater(self._stall_timeout - silent, self._give_up)
        self._attempts = 0
        self._last_problem = f"the connection dropped ({reason})"
        if self._pipe is not None:
            self._pipe.close()  # wakes the reader thread
        self._throttle.wake()  # and the sending thread, waiting its turn
        if self._channel is not None:
            self._channel.interrupt()  # or sending
        if self._connection_open:
            self._connection.abort()
        self._reconnect_when_idle()

    def _reconnect_when_idle(self) -> None:
        if self._dropping and not self._workers and not self._connection_open and not self.concluded:
            self._dropping = False
            self._pipe = None
            self._connection = None
            self.state = "reconnecting"
            self._schedule_attempt()

    def _worker_ended(self, result: Any) -> None:
        if isinstance(result, Failure) and self._dropping:
            result = None  # it only noticed its connection go
        elif isinstance(result, Failure) and result.check(Stalled):
            self._stall(result.value)
            result = None
        super()._worker_ended(result)  # a Disconnected sending thread: the connection tells why (_loss_told)
        self._reconnect_when_idle()

    def attempt_failed(self, problem: str) -> None:
        """A reconnection attempt did not get through: try again, or give up at the deadline."""
        self._connection = None
        self._last_problem = problem
        if not self.concluded:
            self._schedule_attempt()

    def _schedule_attempt(self) -> None:
        self._next_attempt = self._reactor.callLater(reconnect_delay(self._attempts), self._connect)
        self._attempts += 1

    def _give_up(self) -> None:
        """Reactor: no new connection resumed the seed within ``stall_timeout`` of the drop (or of
        the link going silent): fail, ending an attempt stuck in its handshake too."""
        if self._silent_for:
            what = (f"seed {self.seed_id} stalled: nothing moved to the receiver for {self._stall_timeout:g} s "
                    f"(SeedStallTimeoutSeconds): the connection carried nothing for {self._silent_for:g} s and "
                    "was dropped, and no new one resumed the seed")
        else:
            what = (f"seed {self.seed_id}: the connection to the receiver dropped and could not be resumed within "
                    f"{self._stall_timeout:g} s (SeedStallTimeoutSeconds)")
        self.conclude(TransferFailed(f"{what}; last: {self._last_problem}"))
        if self._connection_open:
            self._connection.abort()

    def conclude(self, error: TransferFailed | None) -> None:
        if self._connecting is not None and self._connection is None:
            self._connecting.cancel()
        if self._next_attempt is not None and self._next_attempt.active():
            self._next_attempt.cancel()
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._throttle.close()
        super().conclude(error)


def send_tree(reactor: Any, host: str, port: int, seed_id: str, source_dir: str, *, secret: bytes,
              tls: Any = None, stall_timeout: float = 300, connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
              max_bytes_per_second: int = 0, compression: str = "auto",
              backup: BackupSource | None = None, streams: int = 1) -> _SendTransfer | SendLanes:
    """Start sending ``source_dir`` to the receiver at ``host:port`` for ``seed_id``.

    ``tls``: an ``IOpenSSLClientConnectionCreator`` (e.g. ``optionsForClientTLS(host, trustRoot=...)``)
    or None for plain TCP.  ``max_bytes_per_second``: the pacing (0: none), see :meth:`limit_rate`.
    ``compression``: ``SeedCompression`` (:mod:`orchagent.seed.compression`).  ``backup``: a hot seed's
    running backup (:mod:`orchagent.seed.hotseed`), whose stream is sent instead of ``source_dir``
    (over one connection, whatever ``streams``).  ``streams``: the connections (lanes) the files are
    spread over (:mod:`orchagent.seed.lanes`).
    """
    lanes = 1 if backup is not None else streams
    throttle = Throttle(max_bytes_per_second)
    plan = Plan(source_dir, lanes)
    endpoint: Any = HostnameEndpoint(reactor, host, port, timeout=connect_timeout)
    if tls is not None:
        endpoint = wrapClientTLS(tls, endpoint)

    def start_lane(lane: int) -> _SendTransfer:
        transfer = _SendTransfer(reactor, seed_id, source_dir, secret, stall_timeout, throttle, compression, backup,
                                 lane, lanes, plan.carries(lane) if lanes > 1 else lambda _: WHOLE)
        transfer.connect(endpoint, f"{host}:{port}")
        return transfer

    return start_lane(0) if lanes == 1 else SendLanes(seed_id, source_dir, lanes, start_lane)
