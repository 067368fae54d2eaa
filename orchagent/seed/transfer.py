"""What both sides of a built-in seed transfer share: a :class:`Transfer`'s life and its connection.

What a transfer reports (progress, outcome) is :mod:`orchagent.seed.outcome`; how its connection is
lent to a worker for the data stream, :class:`~orchagent.seed.tlschannel.Lending`.

The receiving side is :mod:`orchagent.seed.receiver` (``SeedReceiverServer``; each armed receive is
a :class:`~orchagent.seed.receive.ReceiveTransfer`), the sending side :mod:`orchagent.seed.sender`
(``send_tree``).  Each moves the data in worker threads of its own, so the reactor never blocks;
why it is built so is in ``bench/RESULTS.md`` ("Why the seed engine is shaped as it is").
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable

import attrs
from twisted.internet import interfaces
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from orchagent import logs
from orchagent.seed import authentication, protocol
from orchagent.seed.channel import Disconnected, SocketChannel
from orchagent.seed.outcome import Outcome, Progress, TransferAborted
from orchagent.seed.pipe import Closed, Pipe
from orchagent.seed.protocol import Kind, TransferFailed
from orchagent.seed.resumption import silence_limit
from orchagent.seed.tlschannel import Lending

log = logs.logger(__name__)

PIPE_BYTES = 8 * 1024 * 1024  # per transfer, between the sender's reader thread and its sending thread
SOCKET_BUFFER_BYTES = 1024 * 1024  # read size and write high-water mark of the TCP transport


@attrs.frozen
class Dropped:
    """What a connection's worker returns when that connection dropped and the transfer goes on."""

    resent_bytes: int = 0  # what it had moved past the point the next connection continues from
    silent: float = 0.0  # seconds the connection had carried nothing when it was dropped (0: it closed)


class Transfer(Outcome):
    """One side of one seed transfer.

    ``progress``, ``state`` (waiting, running, finishing, succeeded, failed, aborted), ``error``
    (a :class:`TransferFailed` saying what failed), ``when_done()`` (a new Deferred each call:
    None on authenticated success, else the error) and ``abort()``.  It ends in exactly one of
    succeeded, failed or aborted, and ``when_done`` fires only once no worker thread and no
    connection is left (and, on a failed receive, once its staging directory is gone).
    Between ``waiting`` and the end it may be ``reconnecting`` (a dropped connection, see
    :mod:`orchagent.seed.resumption`).

    Per transfer: the progress, the outcome, the workers' count.  Per connection (replaced on
    a resume): ``_connection`` and the data path, ``_pipe`` or the channel it is lent as (``_lending``).
    """

    _loss_told = False  # a worker's Disconnected waits for the connection to tell what ended it

    def __init__(self, reactor: Any, seed_id: str, role: str, stall_timeout: float) -> None:
        self.seed_id = seed_id
        self.role = role  # "send" or "receive"
        self.progress = Progress()
        self.state = "waiting"
        self.error: TransferFailed | None = None
        self.last_refusal: str | None = None
        self._reactor = reactor
        self._stall_timeout = stall_timeout
        self._silence = silence_limit(stall_timeout)  # a connection silent this long is dropped and resumed
        self._concluded = False
        self._workers = 0  # worker threads still running
        self._connection_open = False
        self._waiters: list[Deferred] = []
        self._connection: Connection | None = None
        self._pipe: Pipe | None = None  # the sender's, between its reader thread and its sending thread
        self._lending = Lending(reactor)

    @property
    def done(self) -> bool:
        return self.state in ("succeeded", "failed", "aborted")

    @property
    def succeeded(self) -> bool:
        return self.state == "succeeded"

    def abort(self) -> Deferred:
        """Stop now; the Deferred fires (with None) once nothing of this transfer runs any more."""
        self.conclude(TransferAborted(f"seed {self.seed_id} transfer aborted"))
        if self._connection_open:
            # A peer that stopped reading would hold a graceful close (and abort-seed) until the
            # stall timeout: drop the connection now, unsent data and all.
            self._connection.abort()
        d = self.when_done()
        d.addErrback(lambda _: None)
        return d

    # shared machinery

    def _start_worker(self, work: Callable[..., Any], *args: Any) -> None:
        """Run ``work`` in a thread of its own, then :meth:`_worker_ended` in the reactor.

        Not in the reactor's thread pool: a seed's threads run for as long as the copy takes,
        and a few concurrent seeds would hold every pool thread that the API's blocking calls
        (``du``, file reads) need, or wait for one themselves half started.
        """
        self._workers += 1

        def run() -> None:
            try:
                result = work(*args)
            except BaseException:  # reported to the reactor, which concludes with it
                result = Failure()
            self._reactor.callFromThread(self._worker_ended, result)

        threading.Thread(target=run, name=f"seed-{self.role}-{self.seed_id}", daemon=True).start()

    def _worker_ended(self, result: Any) -> None:
        self._workers -= 1
        if not self._workers:
            self._release_channel()  # the connection's; after a drop the next one lends its own
        if isinstance(result, Failure):
            if not (result.check(Disconnected) and self._connection_open and self._loss_told):
                self._worker_failed(self._as_error(result))
            # else reading the connection (given back by now) tells why it ended
        elif isinstance(result, Dropped):
            self._worker_dropped(result)
        elif not self._workers:
            self._worker_succeeded()
        self._fire_if_idle()

    def _worker_failed(self, error: TransferFailed) -> None:
        self.conclude(error)

    def _worker_dropped(self, dropped: Dropped) -> None:
        raise NotImplementedError

    def _worker_succeeded(self) -> None:
        raise NotImplementedError

    def conclude(self, error: TransferFailed | None) -> None:
        """Record the outcome (the first one wins) and stop everything still moving."""
        if self._concluded:
            return
        self._concluded = True
        self.error = error
        if self._pipe is not None and error is not None:
            self._pipe.close()
        self._lending.stop(worker=self._workers > 0)
        if self._connection_open:
            self._connection.close(error)
        self._fire_if_idle()

    @property
    def concluded(self) -> bool:
        """The outcome is decided (what still runs is being stopped)."""
        return self._concluded

    def _fire_if_idle(self) -> None:
        """Report the outcome once it is known and neither a worker nor the connection is left."""
        if not self._concluded or self._workers or self._connection_open or self.done:
            return
        error = self.error
        self.state = "succeeded" if error is None else "aborted" if isinstance(error, TransferAborted) else "failed"
        self.progress.finished = self._reactor.seconds()
        if error is None:
            log.info("seed {seed_id}: {role} succeeded, {files} files, {nbytes} bytes in {seconds:.1f} s",
                     seed_id=self.seed_id, role=self.role, files=self.progress.files_done,
                     nbytes=self.progress.bytes_done, seconds=self._elapsed())
        else:
            log.warn("seed {seed_id}: {role} {state}: {error}", seed_id=self.seed_id, role=self.role,
                     state=self.state, error=str(error))
        self._fire_waiters()

    def _elapsed(self) -> float:
        started = self.progress.started
        return 0.0 if started is None else self._reactor.seconds() - started

    def _as_error(self, failure: Failure) -> TransferFailed:
        error = failure.value
        if isinstance(error, (Closed, Disconnected)) and self.error is not None:
            return self.error
        if isinstance(error, Disconnected):
            return TransferFailed(f"seed {self.seed_id}: the peer closed the connection")
        if isinstance(error, TransferFailed):
            return error
        if isinstance(error, OSError):
            where = f" on {os.fsdecode(error.filename)!r}" if error.filename else ""
            return TransferFailed(f"seed {self.seed_id} {self.role} failed{where}: {error.strerror or error}")
        log.failure("seed {seed_id}: unexpected error in the {role} worker", failure,
                    seed_id=self.seed_id, role=self.role)
        return TransferFailed(f"seed {self.seed_id} {self.role} failed: internal error {error!r}")

    def connection_opened(self, connection: Connection) -> None:
        self._connection = connection
        self._connection_open = True

    def connection_closed(self) -> None:
        self._connection_open = False
        self._fire_if_idle()

    def _begin(self) -> None:
        self.state = "running"
        self.progress.started = self._reactor.seconds()

    @property
    def _channel(self) -> SocketChannel | None:
        """The connection as lent to the worker for the data stream (None: not lent)."""
        return self._lending.channel

    def _open_channel(self, connection: Connection, interrupt: int, stalled: str,
                      start: Callable[[SocketChannel], None]) -> None:
        """Lend ``connection`` to a worker for the data stream (:class:`~orchagent.seed.tlschannel.Lending`),
        then ``start`` that worker with the channel; its silence limit is the transfer's."""
        def wanted() -> bool:  # not over, and this connection did not drop meanwhile (a resume lends the next one)
            return not self.concluded and connection is self._connection and self._connection_open

        if not self._lending.lend(connection, self._silence, interrupt, stalled, start, wanted):
            self.conclude(TransferFailed(f"seed {self.seed_id} {self.role} failed: the connection has no socket"))

    def _release_channel(self) -> None:
        """Reactor: the worker is done with the channel: take the connection back."""
        self._lending.release()


class Connection(Protocol, TimeoutMixin):
    """What both sides share: the injected clock, a stall timer, small-frame parsing."""

    def __init__(self, reactor: Any, stall_timeout: float) -> None:
        self._reactor = reactor
        self._stall_timeout = stall_timeout
        self._frames = protocol.FrameBuffer()
        self._closed = False
        self._last_resort: Any = None
        self.lent = False  # a worker holds the connection (TLS, see lend)
        self._after_lending: list[Callable[[], None]] = []

    def callLater(self, period: float, func: Callable[[], None]) -> Any:
        return self._reactor.callLater(period, func)

    def connectionMade(self) -> None:
        _widen_buffers(self.transport)
        self.setTimeout(self._stall_timeout)

    def lend(self) -> None:
        """TLS: a worker holds the connection for the data stream (:class:`~orchagent.seed.tlschannel.TlsChannel`).

        Until :meth:`reclaim` nothing here touches the transport: reading stays paused, the stall
        timer is the worker's socket timeout, and closing waits (the transfer interrupts the worker,
        which then gives the connection back at once).
        """
        self.lent = True
        self.setTimeout(None)

    def reclaim(self) -> None:
        """TLS: the worker gave the connection back; do what waited for it."""
        self.lent = False
        self.resume_reading()
        self.setTimeout(self._stall_timeout)
        waiting, self._after_lending = self._after_lending, []
        for action in waiting:
            action()

    def close(self, error: TransferFailed | None) -> None:
        """End the connection, telling the peer why when there is a reason."""
        if self.lent:
            self._after_lending.append(lambda: self.close(error))
            return
        if self._closed:
            return
        self._closed = True
        self.setTimeout(None)
        if error is not None:
            self.transport.write(protocol.reason_frame(Kind.FAIL, str(error)))
        self.transport.loseConnection()
        self._last_resort = self._reactor.callLater(self._stall_timeout, self.transport.abortConnection)

    def abort(self) -> None:
        """Drop the connection now, unsent data and all."""
        if self.lent:
            self._after_lending.append(self.abort)
            return
        self.transport.abortConnection()

    def pause_reading(self) -> None:
        self.transport.pauseProducing()

    def resume_reading(self) -> None:
        self.transport.resumeProducing()

    def connectionLost(self, reason: Failure) -> None:
        self._closed = True
        self.setTimeout(None)
        if self._last_resort is not None and self._last_resort.active():
            self._last_resort.cancel()

    def _peer(self) -> str:
        peer = self.transport.getPeer()
        return f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}"


def tls_keying_material(transport: Any) -> bytes:
    """Keying material exported from the connection's TLS session (RFC 5705), b"" on plain TCP.

    Both ends of one TLS session get the same bytes, and nobody else can compute them, not
    even a relay that terminates TLS towards each end: mixed into the session key, they make
    it secret without ``SeedTransferSecret`` and bind the handshake to this TLS session.
    """
    if not interfaces.ISSLTransport.providedBy(transport):
        return b""
    return transport.getHandle().export_keying_material(authentication.TLS_EXPORTER_LABEL,
                                                        authentication.TLS_EXPORTER_BYTES)


def _widen_buffers(transport: Any) -> None:
    """Read and buffer up to a MB per socket call instead of 64 KiB (the data moves in 1 MB frames).

    ``bufferSize`` is the public knob of Twisted's file-descriptor transports; under TLS it sits
    on the wrapped TCP transport.
    """
    while transport is not None:
        if hasattr(transport, "bufferSize") and hasattr(transport, "socket"):
            transport.bufferSize = SOCKET_BUFFER_BYTES
            return
        transport = getattr(transport, "transport", None)
