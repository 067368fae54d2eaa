"""A TLS connection lent to a worker thread for the data stream: the worker encrypts and decrypts.

Twisted's TLS layer does the TLS handshake, the certificate checks and the seed handshake (whose
keys are bound to the TLS session); for the data phase a worker takes the connection's pyOpenSSL
object and a duplicate of the socket under it and moves the stream itself, as plain TCP does with
:class:`~orchagent.seed.channel.SocketChannel`: no reactor turn, no Twisted buffer and no GIL
contention per 16 KB record (the reactor's TLS cost 10 to 20% against socat's; ``bench/RESULTS.md``).
It is the same TLS session, not a second one of the ``ssl`` module: nothing about certificates,
peer checks or the exporter binding changes, and no second handshake has to be bound to the first.

:class:`Lending` hands a transfer's connection to its worker and takes it back: a TLS one once
Twisted's TLS layer is :func:`idle`, a plain TCP one as its :class:`SocketChannel` at once.
"""

from __future__ import annotations

import contextlib
import errno
from typing import Any, Callable, Iterator

from OpenSSL import SSL
from twisted.internet import interfaces

from orchagent.seed.channel import SocketChannel
from orchagent.seed.pipe import Closed

PLAINTEXT_BYTES = 256 * 1024  # encrypted, then written to the socket, at a time
RECORDS_BYTES = PLAINTEXT_BYTES + PLAINTEXT_BYTES // 8  # read out at once: those bytes' records, with room
JOIN_BELOW = 64 * 1024  # smaller parts of a batch are joined, not sent as records of their own
CIPHERTEXT_BYTES = 1024 * 1024  # read from the socket at a time
RECORD_READ_BYTES = 16 * 1024  # asked of one SSL_read, which returns at most one record's 16 KB
IDLE_POLL_SECONDS = 0.005  # how often to look again whether Twisted's TLS layer is idle (:func:`idle`)


def idle(transport: Any) -> bool:
    """Whether Twisted's TLS layer on ``transport``, and the TCP transport under it, have nothing
    left to write, so that a worker can take the connection without the reactor touching its TLS
    object again (a pending write would, and would also let the reactor notice a lost connection
    and decrypt in its ``connectionLost``).

    Twisted has no public way to ask.  These attributes are the same in Debian's Twisted 22.4 and
    the newest (the tests run on both); ``_aggregator`` (Twisted >= 22.8) batches small writes
    until the next reactor turn.  A missing attribute counts as busy: the transfer then waits and
    fails by its stall timer rather than guess.
    """
    try:
        tcp = transport.transport
        aggregator = getattr(transport, "_aggregator", None)
        return (not transport.disconnecting and not transport._appSendBuffer
                and (aggregator is None or not aggregator._buffer)
                and not tcp.disconnecting and tcp.offset == len(tcp.dataBuffer) and not tcp._tempDataLen)
    except AttributeError:
        return False


class Lending:
    """A transfer's connection as lent to its worker for the data stream, one connection at a time.

    Plain TCP lends a duplicate of the socket at once (:class:`SocketChannel`).  TLS lends the whole
    connection (:class:`TlsChannel`), on a later reactor turn: lending may be asked for inside
    Twisted's TLS layer (delivering the frame that began the data phase), which must have returned,
    and have nothing left to write, before a worker may take it.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self.channel: SocketChannel | None = None  # the connection as lent to the worker
        self._connection: Any = None  # the seed Connection lent (or being lent)
        self._taking: Any = None  # TLS: the next look whether the connection is idle

    def lend(self, connection: Any, silence: float, interrupt: int, stalled: str,
             start: Callable[[SocketChannel], None], wanted: Callable[[], bool]) -> bool:
        """Reactor: lend ``connection`` (a :class:`~orchagent.seed.transfer.Connection`), then ``start``
        the worker with the channel, unless ``wanted()`` says the transfer no longer wants it by then.
        False: the connection has no socket to lend.

        ``silence``, ``interrupt`` and ``stalled``: see :class:`SocketChannel`.
        """
        transport = connection.transport
        self._connection = connection
        if not interfaces.ISSLTransport.providedBy(transport):
            self.channel = SocketChannel.lend(transport, silence, interrupt, stalled)
            if self.channel is None:
                return False
            start(self.channel)
            return True
        connection.pause_reading()

        def take() -> None:
            if not wanted():
                return
            if not idle(transport):
                self._taking = self._reactor.callLater(IDLE_POLL_SECONDS, take)
                return
            self._taking = None
            self.channel = TlsChannel.take(transport, silence, interrupt, stalled)
            connection.lend()
            start(self.channel)

        self._taking = self._reactor.callLater(0, take)
        return True

    def stop(self, worker: bool) -> None:
        """Reactor: the transfer is over: lend nothing more, and wake the ``worker`` holding the channel."""
        if self._taking is not None and self._taking.active():
            self._taking.cancel()
            self._connection.resume_reading()  # under TLS, closing needs the peer's close_notify
        if self.channel is not None and worker:
            self.channel.interrupt()

    def release(self) -> None:
        """Reactor: the worker is done with the channel (it ended, or the stream did): take the
        connection back."""
        channel, self.channel = self.channel, None
        if channel is None:
            return
        channel.close()
        if channel.exclusive:
            self._connection.reclaim()


class TlsChannel(SocketChannel):
    """A TLS connection's pyOpenSSL object and a duplicate of its socket, lent to one worker.

    The reactor lends it only while :func:`idle` holds and reading is paused, after Twisted's TLS
    layer returned from what it was doing, and touches the TLS object again only once the worker
    gave it back (:meth:`~orchagent.seed.transfer.Connection.lend`): no two threads ever use it at
    once.  Nothing is lost at either hand-over: the TLS object keeps the records it has half read
    and the plaintext not yet asked for, and Twisted's TLS layer carries on from there.  OpenSSL's
    calls release the GIL (pyOpenSSL goes through cffi), so encryption overlaps the other threads.
    """

    exclusive = True  # the reactor must not touch the connection while a worker holds it

    def __init__(self, tls: SSL.Connection, handle: Any, silence: float, interrupt: int,
                 stalled: str) -> None:
        super().__init__(handle, silence, interrupt, stalled)
        self._tls = tls
        self._ciphertext: memoryview | None = None  # the receiving worker's socket buffer

    @classmethod
    def take(cls, transport: Any, silence: float, interrupt: int, stalled: str) -> TlsChannel:
        """Reactor: the channel of the TLS ``transport`` (which must be :func:`idle`)."""
        return cls(transport.getHandle(), transport.transport.getHandle(), silence, interrupt, stalled)

    def send(self, parts: list[bytes]) -> None:
        """Worker: encrypt all of ``parts`` and send the records."""
        for plaintext in _coalesced(parts):
            view = memoryview(plaintext)
            while view:
                if self._interrupted:
                    raise Closed()
                chunk, view = view[:PLAINTEXT_BYTES], view[PLAINTEXT_BYTES:]
                with _tls_errors():
                    while chunk:  # one record per call (pyOpenSSL enables partial writes)
                        chunk = chunk[self._tls.send(chunk):]
                self._send_records()  # in one socket write, not one per 16 KB record

    def _send_records(self) -> None:
        while True:
            try:
                records = self._tls.bio_read(RECORDS_BYTES)
            except SSL.WantReadError:
                return  # all of it is on the socket
            super().send([records])

    def receive(self, buffer: memoryview) -> memoryview | None:
        """Worker: the next plaintext, decrypted into ``buffer``; None at the end of the stream."""
        while True:
            count = self._decrypt(buffer)
            if count:
                return buffer[:count]
            if count is None:
                return None  # the peer closed TLS (close_notify)
            if self._ciphertext is None:
                self._ciphertext = memoryview(bytearray(CIPHERTEXT_BYTES))
            records = super().receive(self._ciphertext)
            if records is None:
                return None
            self._tls.bio_write(records)

    def _decrypt(self, buffer: memoryview) -> int | None:
        """As much plaintext as the records already read give, up to ``buffer``'s size (None: TLS ended)."""
        count, size, tls = 0, len(buffer), self._tls
        try:
            with _tls_errors():
                while count < size:  # a record per call
                    count += tls.recv_into(buffer[count:], RECORD_READ_BYTES)
        except SSL.WantReadError:
            pass
        except SSL.ZeroReturnError:
            return count or None
        return count

    def close(self) -> None:
        super().close()
        self._tls = None  # Twisted's TLS layer holds it from here on


def _coalesced(parts: list[bytes]) -> Iterator[bytes]:
    """``parts`` with runs of small ones joined: each write to the TLS object makes a record (and a
    Python call) of its own, and a batch of small files has thousands of parts."""
    small: list[bytes] = []
    size = 0
    for part in parts:
        if len(part) >= JOIN_BELOW:
            if small:
                yield b"".join(small)
                small, size = [], 0
            yield part
        else:
            small.append(part)
            size += len(part)
            if size >= JOIN_BELOW:
                yield b"".join(small)
                small, size = [], 0
    if small:
        yield b"".join(small)


@contextlib.contextmanager
def _tls_errors() -> Iterator[None]:
    """OpenSSL's failures (a record that does not decrypt, an alert) as an OSError naming OpenSSL's
    reason, which the transfer reports as it reports a socket's; WantRead and ZeroReturn pass through."""
    try:
        yield
    except (SSL.WantReadError, SSL.ZeroReturnError):
        raise
    except SSL.Error as error:
        raise ConnectionAbortedError(errno.EPROTO, f"the TLS connection failed ({_reason(error)})") from error


def _reason(error: SSL.Error) -> str:
    """OpenSSL's reasons (its error queue), or the error as it is."""
    queue = error.args[0] if error.args and isinstance(error.args[0], list) else []
    return "; ".join(str(entry[-1]) for entry in queue if entry) or str(error)
