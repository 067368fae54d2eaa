"""The sending side of the built-in seed transfer.

    transfer = send_tree(reactor, "target-host", 21234, "42", "/mnt/snap/mysql", secret=b"...")

A reader thread walks, reads and MACs the source into a bounded pipe; on plain TCP a sending
thread takes it to the socket (:mod:`orchagent.seed.channel`), under TLS the reactor does, both
paced by the seed's :class:`~orchagent.seed.throttle.Throttle` (``SeedMaxBytesPerSecond``, changed
on the fly by :meth:`limit_rate`).  The transfer succeeds only with the receiver's authenticated DONE.
"""

from __future__ import annotations

import socket
import time
from typing import Any, Callable

from twisted.internet import interfaces
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.python.failure import Failure
from zope.interface import implementer

from orchagent import logs
from orchagent.seed import authentication
from orchagent.seed.channel import SocketChannel
from orchagent.seed.pipe import Pipe
from orchagent.seed.protocol import Kind, ProtocolError, TransferFailed
from orchagent.seed.hotseed import BackupSource
from orchagent.seed.reader import Batch, StreamReader, TreeReader
from orchagent.seed.throttle import Throttle
from orchagent.seed.transfer import PIPE_BYTES, Connection, Transfer, tls_keying_material

log = logs.logger(__name__)

CONNECT_TIMEOUT_SECONDS = 30


class _SendTransfer(Transfer):
    def __init__(self, reactor: Any, seed_id: str, source_dir: str, secret: bytes, stall_timeout: float,
                 max_bytes_per_second: int, compression: str, backup: BackupSource | None) -> None:
        super().__init__(reactor, seed_id, "send", stall_timeout)
        self.source_dir = source_dir
        self._backup = backup
        self._secret = secret
        self._compression = compression
        self._connecting: Deferred | None = None
        self._throttle = Throttle(max_bytes_per_second)
        self._paused_pump: Any = None  # TLS: the reactor's delayed pump while the throttle holds it

    @property
    def max_bytes_per_second(self) -> int:
        """The pacing in force (0: none)."""
        return self._throttle.rate

    def limit_rate(self, max_bytes_per_second: int) -> None:
        """Reactor: pace the rest of the transfer at ``max_bytes_per_second`` (0: no limit)."""
        self._throttle.set_rate(max_bytes_per_second)  # wakes a waiting sending thread
        if self._paused_pump is not None and self._paused_pump.active():
            self._paused_pump.cancel()
            self._paused_pump = None
            self.pump()  # TLS: recomputed at the new rate

    def connect(self, endpoint: interfaces.IStreamClientEndpoint, where: str) -> None:
        self._connecting = connectProtocol(endpoint, _SenderProtocol(self, self._reactor, self._stall_timeout))

        def failed(failure: Failure) -> None:
            if not self.concluded:
                self.conclude(TransferFailed(f"cannot connect to the seed receiver at {where}: "
                                             f"{failure.getErrorMessage()}"))

        self._connecting.addCallbacks(lambda _: None, failed)

    def session(self, receiver_nonce: bytes, sender_nonce: bytes, tls_material: bytes) -> authentication.Session:
        """This transfer's session with the receiver that sent ``receiver_nonce``."""
        return authentication.Session.derive(self._secret, self.seed_id, receiver_nonce, sender_nonce, tls_material)

    def authenticated(self, connection: _SenderProtocol, mac: authentication.StreamMac) -> None:
        self._begin()
        self._pipe = Pipe(PIPE_BYTES)
        self._channel = SocketChannel.lend(connection.transport, self._stall_timeout, socket.SHUT_RDWR,
                                           f"seed {self.seed_id} stalled: the receiver did not take data "
                                           f"for {self._stall_timeout:g} seconds")
        if self._channel is None:
            connection.register_as_producer()
            self._start_worker(self._read, mac, lambda: self._reactor.callFromThread(self.pump))
        else:
            self._start_worker(self._read, mac, lambda: None)
            self._start_worker(self._send)

    def _read(self, mac: authentication.StreamMac, queued: Callable[[], None]) -> None:
        """Reader thread: walk, read and MAC the source into the pipe, a few MB ahead of the socket."""
        # for room in the pipe: how far the link is the limit (SeedCompression auto); a duration this
        # thread measures of its own blocking, not a time kept anywhere, so not the reactor's clock
        waited = 0.0
        if self._backup is None:
            reader = TreeReader(self.source_dir, mac, compression=self._compression, waited=lambda: waited)
        else:
            reader = StreamReader(self._backup.fd, self._backup.port, mac, self._backup.ended,
                                  compression=self._compression, waited=lambda: waited)
        batches = reader.batches()
        try:
            for batch in batches:
                started = time.monotonic()
                self._pipe.put_wait(batch, batch.size)
                waited += time.monotonic() - started
                queued()
        finally:
            batches.close()  # an abort: the compressing threads stop now, not when the generator is collected
            self._pipe.finish()
            if self._backup is not None:
                self._backup.close()

    def _send(self) -> None:
        """Sending thread (plain TCP): from the pipe straight onto the socket."""
        while (batch := self._pipe.get_wait()) is not None:
            self._throttle.wait()
            self._throttle.spend(batch.size)
            self._count(batch)
            self._channel.send(batch.parts)

    def pump(self) -> None:
        """Reactor (TLS): move batches from the pipe to the transport until it asks for a pause."""
        if self._paused_pump is not None and self._paused_pump.active():
            return  # the throttle holds the data until then (limit_rate reschedules it)
        connection = self._connection
        while not connection.paused and not self.concluded:
            if pause := self._throttle.delay():
                self._paused_pump = self._reactor.callLater(pause, self.pump)
                return
            batch = self._pipe.get()
            if batch is None:
                return
            self._throttle.spend(batch.size)
            connection.write_batch(batch.parts)
            self._count(batch)

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

    def conclude(self, error: TransferFailed | None) -> None:
        if self._connecting is not None and self._connection is None:
            self._connecting.cancel()
        if self._paused_pump is not None and self._paused_pump.active():
            self._paused_pump.cancel()
        self._throttle.close()
        super().conclude(error)


@implementer(interfaces.IPushProducer)
class _SenderProtocol(Connection):
    def __init__(self, transfer: _SendTransfer, reactor: Any, stall_timeout: float) -> None:
        super().__init__(reactor, stall_timeout)
        self._transfer = transfer
        self._nonce = authentication.new_nonce()
        self._session: authentication.Session | None = None
        self._accepted = False
        self._producing = False
        self.paused = False

    def connectionMade(self) -> None:
        super().connectionMade()
        if self._transfer.concluded:
            self.transport.abortConnection()
        else:
            self._transfer.connection_opened(self)

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        self._frames.feed(data)
        try:
            for kind, payload in self._frames.frames():
                self._frame(kind, payload)
        except ProtocolError as e:
            self._transfer.conclude(TransferFailed(f"seed {self._transfer.seed_id}: {e}"))

    def _frame(self, kind: Kind, payload: bytes) -> None:
        transfer = self._transfer
        if kind == Kind.HELLO and self._session is None:
            self._session = transfer.session(authentication.parse_hello(payload), self._nonce,
                                             tls_keying_material(self.transport))
            self.transport.write(authentication.auth(self._session))
        elif kind == Kind.ACCEPT and self._session is not None and not self._accepted:
            if not self._session.proves(b"receiver", payload):
                raise ProtocolError("the receiver's proof is wrong: the agents have different SeedTransferSecret "
                                    "values, or something between them relays the connection")
            self._accepted = True
            log.info("seed {seed_id}: sending {source} to {peer}", seed_id=transfer.seed_id,
                     source=transfer.source_dir, peer=self._peer())
            transfer.authenticated(self, self._session.stream_mac())
        elif kind == Kind.REFUSE:
            transfer.conclude(TransferFailed(f"the seed receiver at {self._peer()} refused seed "
                                             f"{transfer.seed_id}: {payload.decode('utf-8', 'replace')}"))
        elif kind == Kind.FAIL:
            transfer.conclude(TransferFailed(f"the seed receiver failed: {payload.decode('utf-8', 'replace')}"))
        elif kind == Kind.PROGRESS and self._accepted:
            pass  # a keepalive; resetTimeout above is its purpose
        elif kind == Kind.DONE and transfer.state == "finishing":
            if not self._session.proves(b"done", payload):
                raise ProtocolError("the receiver's confirmation is not authentic: something between the agents "
                                    "altered the connection")
            transfer.conclude(None)
        else:
            raise ProtocolError(f"unexpected {kind.name} frame from the receiver")

    # IPushProducer, for our own transport: the reader thread waits while we are paused

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.resetTimeout()
        self._transfer.pump()

    def stopProducing(self) -> None:
        self.paused = True

    def timeoutConnection(self) -> None:
        what = "answer" if not self._accepted else "take data"
        self._transfer.conclude(TransferFailed(
            f"seed {self._transfer.seed_id} stalled: the receiver did not {what} for {self._stall_timeout:g} seconds"))

    def write_batch(self, parts: list[bytes]) -> None:
        """Reactor (TLS): hand one batch to the transport (which counts as progress)."""
        if len(parts) == 2:  # a DATA header and one large read: no joining copy of the read
            for part in parts:
                self.transport.write(part)
        else:
            self.transport.writeSequence(parts)
        self.resetTimeout()

    def register_as_producer(self) -> None:
        """TLS: the reactor sends, pausing the reader's pipe while the transport is full."""
        self.transport.registerProducer(self, True)
        self._producing = True

    def close(self, error: TransferFailed | None) -> None:
        if self._producing and not self._closed:
            self.transport.unregisterProducer()
        super().close(error)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self._transfer.conclude(TransferFailed(
            f"seed {self._transfer.seed_id}: the connection to the receiver was lost before it confirmed "
            f"the seed ({reason.getErrorMessage()})"))
        self._transfer.connection_closed()


def send_tree(reactor: Any, host: str, port: int, seed_id: str, source_dir: str, *, secret: bytes,
              tls: Any = None, stall_timeout: float = 300, connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
              max_bytes_per_second: int = 0, compression: str = "auto",
              backup: BackupSource | None = None) -> _SendTransfer:
    """Start sending ``source_dir`` to the receiver at ``host:port`` for ``seed_id``.

    ``tls``: an ``IOpenSSLClientConnectionCreator`` (e.g. ``optionsForClientTLS(host, trustRoot=...)``)
    or None for plain TCP.  ``max_bytes_per_second``: the pacing (0: none), see :meth:`limit_rate`.
    ``compression``: ``SeedCompression`` (:mod:`orchagent.seed.compression`).  ``backup``: a hot seed's
    running backup (:mod:`orchagent.seed.hotseed`), whose stream is sent instead of ``source_dir``.
    """
    transfer = _SendTransfer(reactor, seed_id, source_dir, secret, stall_timeout, max_bytes_per_second, compression,
                             backup)
    endpoint: Any = HostnameEndpoint(reactor, host, port, timeout=connect_timeout)
    if tls is not None:
        endpoint = wrapClientTLS(tls, endpoint)
    transfer.connect(endpoint, f"{host}:{port}")
    return transfer
