"""The built-in seed transfer: one agent sends a directory tree, another receives it into a datadir.

Public API (what the seed manager uses)::

    server = SeedReceiverServer(reactor, secret=b"...", tls=None, stall_timeout=300, sender_ous=())
    port = await server.listen(endpoint)          # e.g. tcp:21234:interface=10.0.0.5
    transfer = server.arm("42", "/var/lib/mysql")  # accept exactly one sender for seed 42
    ...
    transfer = send_tree(reactor, "target-host", 21234, "42", "/mnt/snap/mysql", secret=b"...")

A :class:`Transfer` (either side) has ``progress`` (:class:`Progress`: bytes/files done and
total, start and end times), ``state`` (``waiting``, ``running``, ``finishing``, ``succeeded``,
``failed``, ``aborted``), ``error`` (a :class:`TransferFailed` whose message says what failed),
``when_done()`` (a new Deferred each call: fires with None on authenticated success, fails with the
error) and ``abort()``.  ``abort()`` drops the connection, stops the worker threads, removes the
receiver's staging directory and returns a Deferred that fires once no worker thread is left.
A transfer always ends in exactly one of succeeded/failed/aborted, and ``when_done`` fires only
after its worker threads have finished (and, on failure, after the staging directory is gone).

Why it is shaped this way:

* Both sides derive a session key from ``SeedTransferSecret``, the seed id, a nonce from each
  side and, over TLS, keying material exported from the TLS session; the sender proves it
  holds that key, the receiver proves it back, and the whole data stream is MACed with it, so
  what arrives is authenticated end to end (see :mod:`orchagent.seed.protocol`).  With
  ``sender_ous`` (over TLS) the sender must also present a certificate, verified by the TLS
  layer, whose subject has one of those OUs; the secret may then be empty (the certificates,
  the receiver's checked by the sender against the host name, then authenticate, and the TLS
  session keeps the key secret).  A receiver only accepts while a receive for that seed id is
  armed, and only one sender per armed receive.  Whether a seed id is armed is looked at only
  after the sender proved itself: until then every refusal is the same, so a stray peer learns
  nothing about which seed is armed.  Refusals are logged with their detail, kept in
  ``last_refusal`` of the armed transfer so a human can see why nothing arrives, and sent to
  the sender (the detail only once it proved itself; its transfer fails with it); they do not
  fail the armed receive, so a stray peer cannot cancel a seed.  But an armed receive that no
  sender authenticated for within ``stall_timeout`` seconds fails, naming the last refusal, so
  a wrong secret on the source does not leave the target waiting forever.  TLS is optional and
  layered underneath: a server context factory for the receiver, a client connection creator
  for the sender.
  The listener keeps at most ``max_connections`` open (new ones beyond are closed at once), and
  each must authenticate within ``handshake_timeout`` seconds in total, however slowly it sends.
* Disk work happens in worker threads; the reactor never blocks.  The sender's reader thread
  walks, reads and MACs the source into a bounded :class:`~orchagent.seed.pipe.Pipe`; the
  receiver's worker decodes and authenticates the stream and hands the file-system work to the
  writer's disk thread (it has two more helpers, see :mod:`orchagent.seed.tree`).  On a plain
  TCP connection the workers also do the socket I/O of the data stream, through a
  :class:`_SocketChannel` (a duplicate of the connection's socket): a sending thread takes
  batches from the pipe to ``sendmsg`` as they were read, and the receiver's worker reads
  into the writer's few reused buffers (``recv_into``) and decodes them in place.  Measured on
  2 cores, keeping Twisted out of the data path saved a quarter of the sender's CPU (Twisted
  copied every byte into its write buffer and the reactor woke up per batch); splitting
  reading from sending, and decoding from writing, lets each side use both cores while the
  other waits for the disk (see ``bench/RESULTS.md``).  The bounds are the pipe, the
  receive buffers and the sockets' own buffers: a slow disk holds the receiver's buffers,
  which fills the socket and blocks the sender's ``sendmsg``, so memory stays flat whatever
  the data size.  Under TLS the reactor must encrypt, so the stream goes through Twisted: the
  reactor takes the sender's pipe (its connection is a push producer over its transport), and
  on the receiver a second pipe sits between reactor and worker (the receiver pauses its
  transport while its writer is behind).
* Either side gives up when nothing moves for ``stall_timeout`` seconds: the reactor's timer
  during the handshake and under TLS, the channel's socket timeout while a worker holds it.
  The receiver sends keepalives while it verifies and syncs, so a long final sync is not a
  stall.  Ending a transfer while a worker waits on the channel shuts the socket down, which
  wakes it at once (the receiver only its reading side, so its reactor can still say why).
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Any, Callable, Collection

from twisted.internet import interfaces
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.protocols.policies import TimeoutMixin
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from orchagent import logs
from orchagent.connections import ConnectionCap
from orchagent.errors import Conflict
from orchagent.seed import protocol
from orchagent.seed.pipe import Closed, Pipe
from orchagent.seed.protocol import Kind, ProtocolError, TransferFailed
from orchagent.seed.tree import Batch, Progress, TreeReader, TreeWriter
from orchagent.tls import peer_ous

__all__ = ["SeedReceiverServer", "send_tree", "Transfer", "Progress", "TransferFailed", "TransferAborted"]

log = logs.logger(__name__)

PIPE_BYTES = 8 * 1024 * 1024  # per transfer, between the reader thread and the socket (or reactor)
TLS_CHUNK_BYTES = 1024 * 1024  # what the receiver's reactor hands its writer at once (TLS)
SOCKET_BUFFER_BYTES = 1024 * 1024  # read size and write high-water mark of the TCP transport (TLS)
CONNECT_TIMEOUT_SECONDS = 30
_IOV_MAX = os.sysconf("SC_IOV_MAX")  # parts one sendmsg takes (a batch of empty files has thousands)


class TransferAborted(TransferFailed):
    """The transfer was aborted on request."""


class Transfer:
    """One side of one seed transfer; see the module docstring."""

    def __init__(self, reactor: Any, seed_id: str, role: str, stall_timeout: float) -> None:
        self.seed_id = seed_id
        self.role = role  # "send" or "receive"
        self.progress = Progress()
        self.state = "waiting"
        self.error: TransferFailed | None = None
        self.last_refusal: str | None = None
        self._reactor = reactor
        self._stall_timeout = stall_timeout
        self._concluded = False
        self._workers = 0  # worker threads still running
        self._connection_open = False
        self._waiters: list[Deferred] = []
        self._connection: _Connection | None = None
        self._pipe: Pipe | None = None  # the data path through the reactor (TLS)
        self._channel: _SocketChannel | None = None  # the worker's own socket (plain TCP)

    @property
    def done(self) -> bool:
        return self.state in ("succeeded", "failed", "aborted")

    @property
    def succeeded(self) -> bool:
        return self.state == "succeeded"

    def when_done(self) -> Deferred:
        d = Deferred()
        if self.done:
            self._fire_one(d)
        else:
            self._waiters.append(d)
        return d

    def abort(self) -> Deferred:
        """Stop now; the Deferred fires (with None) once nothing of this transfer runs any more."""
        self._conclude(TransferAborted(f"seed {self.seed_id} transfer aborted"))
        if self._connection_open:
            # A peer that stopped reading would hold a graceful close (and abort-seed) until the
            # stall timeout: drop the connection now, unsent data and all.
            self._connection.transport.abortConnection()
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
        if isinstance(result, Failure):
            self._conclude(self._as_error(result))
        elif not self._workers:
            self._worker_succeeded()
        if self._channel is not None and not self._workers:
            self._channel.close()
        self._fire_if_idle()

    def _worker_succeeded(self) -> None:
        raise NotImplementedError

    def _conclude(self, error: TransferFailed | None) -> None:
        """Record the outcome (the first one wins) and stop everything still moving."""
        if self._concluded:
            return
        self._concluded = True
        self.error = error
        if self._pipe is not None and error is not None:
            self._pipe.close()
        if self._channel is not None and self._workers:
            self._channel.interrupt()
        if self._connection_open:
            self._connection.close(error)
        self._fire_if_idle()

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
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            self._fire_one(d)

    def _fire_one(self, d: Deferred) -> None:
        if self.error is None:
            d.callback(None)
        else:
            d.errback(Failure(self.error))

    def _elapsed(self) -> float:
        started = self.progress.started
        return 0.0 if started is None else self._reactor.seconds() - started

    def _as_error(self, failure: Failure) -> TransferFailed:
        error = failure.value
        if isinstance(error, Closed) and self.error is not None:
            return self.error
        if isinstance(error, TransferFailed):
            return error
        if isinstance(error, OSError):
            where = f" on {os.fsdecode(error.filename)!r}" if error.filename else ""
            return TransferFailed(f"seed {self.seed_id} {self.role} failed{where}: {error.strerror or error}")
        log.failure("seed {seed_id}: unexpected error in the {role} worker", failure,
                    seed_id=self.seed_id, role=self.role)
        return TransferFailed(f"seed {self.seed_id} {self.role} failed: internal error {error!r}")

    def _connected(self, connection: _Connection) -> None:
        self._connection = connection
        self._connection_open = True

    def _disconnected(self) -> None:
        self._connection_open = False
        self._fire_if_idle()

    def _begin(self) -> None:
        self.state = "running"
        self.progress.started = self._reactor.seconds()


# --- receiving -------------------------------------------------------------------------------


class _ReceiveTransfer(Transfer):
    def __init__(self, reactor: Any, seed_id: str, datadir: str, stall_timeout: float) -> None:
        super().__init__(reactor, seed_id, "receive", stall_timeout)
        self.datadir = datadir
        self._sender_due = reactor.callLater(stall_timeout, self._no_sender)
        self._incoming: list[bytes] = []  # TLS: pieces not yet handed to the writer
        self._incoming_bytes = 0
        self._hand_over_call: Any = None

    def _no_sender(self) -> None:
        """Armed for ``stall_timeout`` and nobody authenticated: give up, saying what was refused."""
        refused = f"; last {self.last_refusal}" if self.last_refusal else ""
        self._conclude(TransferFailed(f"no sender authenticated for seed {self.seed_id} within "
                                      f"{self._stall_timeout:g} s{refused}"))

    def _conclude(self, error: TransferFailed | None) -> None:
        for call in (self._sender_due, self._hand_over_call):
            if call is not None and call.active():
                call.cancel()
        super()._conclude(error)

    @property
    def connected(self) -> bool:
        return self._connection is not None

    def attach(self, connection: _ReceiverProtocol, early: bytes, mac: protocol.StreamMac) -> None:
        """The sender is authenticated: start the writer; ``early`` is data that came with AUTH."""
        self._sender_due.cancel()
        self._connected(connection)
        self._begin()
        self._channel = _SocketChannel.lend(connection.transport, self._stall_timeout, socket.SHUT_RD,
                                            f"seed {self.seed_id} stalled: the sender did not send data "
                                            f"for {self._stall_timeout:g} seconds")
        writer = TreeWriter(self.datadir, self.seed_id, self.progress, mac=mac)
        if self._channel is None:
            self._pipe = Pipe(PIPE_BYTES, on_room=lambda: self._reactor.callFromThread(connection.resume))
            source = self._pipe.get_wait
        else:
            connection.transport.pauseProducing()  # the worker reads the socket from now on
            connection.setTimeout(None)  # and notices a stall itself
            source = lambda: self._channel.receive(writer.free_buffer())  # noqa: E731
        self._start_worker(self._write, writer, early, source)

    def received(self, data: bytes) -> None:
        """From the reactor (TLS): stream bytes for the writer.

        The TLS layer hands them over in pieces of at most 32 KB.  They go to the writer joined
        into chunks of about a MB (or what one reactor turn brought), so its thread wakes,
        decodes and writes once per chunk rather than per piece.
        """
        if self._concluded or self._pipe is None:
            return  # or bytes after the end of the stream (plain TCP): nothing reads them
        self._incoming.append(data)
        self._incoming_bytes += len(data)
        if self._incoming_bytes >= TLS_CHUNK_BYTES:
            self._hand_over()
        elif self._hand_over_call is None:
            self._hand_over_call = self._reactor.callLater(0, self._hand_over)

    def _hand_over(self) -> None:
        if self._hand_over_call is not None:
            if self._hand_over_call.active():
                self._hand_over_call.cancel()
            self._hand_over_call = None
        if not self._incoming or self._concluded:
            return
        chunk, size = b"".join(self._incoming), self._incoming_bytes
        self._incoming, self._incoming_bytes = [], 0
        if self._pipe.put(chunk, size):
            self._connection.transport.pauseProducing()

    def connection_lost(self) -> None:
        if self._pipe is not None:
            self._hand_over()
            self._pipe.finish()  # the writer decides: whole tree received, or cut short
        self._disconnected()

    def _write(self, writer: TreeWriter, early: bytes, source: Callable[[], Any]) -> None:
        """Worker thread: everything that touches the target disk.

        ``source`` gives the next piece of the stream (None at its end): the pipe's items, or
        views of the writer's reused buffers, which it takes back once written.
        """
        try:
            writer.start()
            writer.feed(early)
            while not writer.ended:
                chunk = source()
                if chunk is None:
                    break
                writer.feed(chunk)
            self._reactor.callFromThread(self._finishing)
            writer.finish(lambda: self._concluded)
        except BaseException:
            writer.discard()
            raise

    def _finishing(self) -> None:
        if not self._concluded:
            self.state = "finishing"
            self._connection.setTimeout(None)  # no data is due any more; keepalives go on
            if self._channel is not None:
                self._connection.transport.resumeProducing()  # notice the sender leaving

    def _worker_succeeded(self) -> None:
        self._conclude(None)


class _Connection(Protocol, TimeoutMixin):
    """What both sides share: the injected clock, a stall timer, small-frame parsing."""

    def __init__(self, reactor: Any, stall_timeout: float) -> None:
        self._reactor = reactor
        self._stall_timeout = stall_timeout
        self._frames = protocol.FrameBuffer()
        self._closed = False
        self._last_resort: Any = None

    def callLater(self, period: float, func: Callable[[], None]) -> Any:
        return self._reactor.callLater(period, func)

    def connectionMade(self) -> None:
        _widen_buffers(self.transport)
        self.setTimeout(self._stall_timeout)

    def close(self, error: TransferFailed | None) -> None:
        """End the connection, telling the peer why when there is a reason."""
        if self._closed:
            return
        self._closed = True
        self.setTimeout(None)
        if error is not None:
            self.transport.write(protocol.reason_frame(Kind.FAIL, str(error)))
        self.transport.loseConnection()
        self._last_resort = self._reactor.callLater(self._stall_timeout, self.transport.abortConnection)

    def connectionLost(self, reason: Failure) -> None:
        self._closed = True
        self.setTimeout(None)
        if self._last_resort is not None and self._last_resort.active():
            self._last_resort.cancel()

    def _peer(self) -> str:
        peer = self.transport.getPeer()
        return f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}"


def _tls_material(transport: Any) -> bytes:
    """Keying material exported from the connection's TLS session (RFC 5705), b"" on plain TCP.

    Both ends of one TLS session get the same bytes, and nobody else can compute them, not
    even a relay that terminates TLS towards each end: mixed into the session key, they make
    it secret without ``SeedTransferSecret`` and bind the handshake to this TLS session.
    """
    if not interfaces.ISSLTransport.providedBy(transport):
        return b""
    return transport.getHandle().export_keying_material(protocol.TLS_EXPORTER_LABEL, protocol.TLS_EXPORTER_BYTES)


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


class _SocketChannel:
    """The socket of a plain TCP connection, lent to a worker thread for the data stream.

    After the handshake the data goes straight between the workers and the socket: no copy into
    Twisted's buffers, no hand-off to the reactor per chunk.  Only one worker moves stream bytes
    while it holds the channel (the sender's reactor just reads the
    receiver's keepalives; the receiver's reactor stops reading and just writes keepalives), so
    nothing interleaves.  The worker uses a duplicate descriptor: Twisted may close its own at
    any time without the worker ever touching a closed or reused descriptor number.  The
    duplicate stays non-blocking (the flag is shared with Twisted's descriptor); the socket
    module's timeout mode waits with ``poll`` instead, which is also the stall timer.
    """

    def __init__(self, handle: socket.socket, stall_timeout: float, interrupt: int, stalled: str) -> None:
        self._socket = handle.dup()
        self._socket.settimeout(stall_timeout)
        self._interrupt = interrupt
        self._interrupted = False
        self._stalled = stalled

    @classmethod
    def lend(cls, transport: Any, stall_timeout: float, interrupt: int, stalled: str) -> _SocketChannel | None:
        """A channel over ``transport``'s socket, or None under TLS (the reactor must encrypt).

        ``interrupt`` is how :meth:`interrupt` shuts the socket down: the receiver only stops
        reading (its reactor still tells the sender why), the sender stops both directions.
        """
        if interfaces.ISSLTransport.providedBy(transport) or not hasattr(transport, "getHandle"):
            return None
        handle = transport.getHandle()
        if not isinstance(handle, socket.socket) or handle.type != socket.SOCK_STREAM:
            return None
        return cls(handle, stall_timeout, interrupt, stalled)

    def send(self, parts: list[bytes]) -> None:
        """Worker: send all of ``parts`` (one ``sendmsg`` each time the socket has room)."""
        views = [memoryview(part) for part in parts]
        while views:
            if self._interrupted:
                raise Closed()
            try:
                sent = self._socket.sendmsg(views[:_IOV_MAX])
            except TimeoutError:
                raise TransferFailed(self._stalled) from None
            while sent:
                if sent >= len(views[0]):
                    sent -= len(views.pop(0))
                else:
                    views[0], sent = views[0][sent:], 0

    def receive(self, buffer: memoryview) -> memoryview | None:
        """Worker: the next bytes, received into ``buffer`` (a view of its start); None at the end."""
        if self._interrupted:
            raise Closed()  # the socket may still hold data (shutting reading down does not drop it)
        try:
            count = self._socket.recv_into(buffer)
        except TimeoutError:
            raise TransferFailed(self._stalled) from None
        except ConnectionResetError:
            return None
        return buffer[:count] if count else None

    def interrupt(self) -> None:
        """Reactor: wake the worker out of a wait on the socket (the transfer is over)."""
        self._interrupted = True
        try:
            self._socket.shutdown(self._interrupt)
        except OSError:
            pass  # already disconnected, which wakes it too

    def close(self) -> None:
        """Reactor, once the workers are gone: give the duplicate descriptor back."""
        self._socket.close()


class _ReceiverProtocol(_Connection):
    def __init__(self, server: SeedReceiverServer) -> None:
        super().__init__(server._reactor, server.stall_timeout)
        self._server = server
        self._nonce = protocol.new_nonce()
        self._transfer: _ReceiveTransfer | None = None
        self._session: protocol.Session | None = None  # once the sender is accepted
        self._keepalive: LoopingCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        # The stall timer restarts on every byte; this one does not, so a trickle cannot hold the port.
        self._handshake_due = self._reactor.callLater(self._server.handshake_timeout, self._handshake_expired)
        self.transport.write(protocol.hello(self._nonce))

    def _handshake_expired(self) -> None:
        if self._transfer is None and not self._closed:
            self._refuse(f"the sender did not authenticate within {self._server.handshake_timeout:g} seconds "
                         "(SeedHandshakeTimeoutSeconds)")

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        self.resetTimeout()
        if self._transfer is not None:
            self._transfer.received(data)
            return
        self._frames.feed(data)
        try:
            for kind, payload in self._frames.frames():
                if kind == Kind.FAIL:  # e.g. a sender of another protocol version
                    raise ProtocolError(f"the sender gave up: {payload.decode('utf-8', 'replace')}")
                if kind != Kind.AUTH:
                    raise ProtocolError(f"expected authentication, got {kind.name}")
                self._authenticate(protocol.parse_auth(payload))
                break
        except ProtocolError as e:
            self._refuse(str(e))
            return
        if self._transfer is not None:
            self._handshake_due.cancel()
            self._transfer.attach(self, self._frames.leftover(), self._session.stream_mac())

    def _authenticate(self, auth: protocol.Auth) -> None:
        """Accept the sender, or refuse it.

        Whether the seed id is armed is looked at only once the sender has proved itself, and
        the same work is done for any seed id before that: a peer without the secret gets the
        same refusal, as fast, for an armed seed as for any other.
        """
        tls_material = _tls_material(self.transport)
        session = protocol.Session.derive(self._server._secret, auth.seed_id, self._nonce, auth.sender_nonce,
                                          tls_material)
        transfer = self._server._armed.get(auth.seed_id)
        problem = self._server.certificate_problem(self.transport)
        if problem is None and not auth.valid(session):
            problem = "the sender's proof is wrong: the agents have different SeedTransferSecret values"
            if tls_material:
                problem += " (or something between them terminates and relays the TLS connection)"
        if problem is not None:
            armed = "" if transfer is not None else ", which is not armed here"
            self._refuse(f"{problem} (seed {auth.seed_id}{armed})", transfer)
        elif transfer is None:
            self._refuse(f"no receive is armed for seed {auth.seed_id}", authenticated=True)
        elif transfer.connected:
            self._refuse(f"seed {auth.seed_id} is already receiving from another sender", transfer,
                         authenticated=True)
        else:
            log.info("seed {seed_id}: receiving into {datadir} from {peer}",
                     seed_id=auth.seed_id, datadir=transfer.datadir, peer=self._peer())
            self.transport.write(protocol.accept(session))
            self._transfer, self._session = transfer, session
            self._keepalive = LoopingCall(self._send_progress)
            self._keepalive.clock = self._reactor
            self._keepalive.start(max(0.1, min(10.0, self._stall_timeout / 3)), now=False)

    def _refuse(self, reason: str, transfer: _ReceiveTransfer | None = None, *, authenticated: bool = False) -> None:
        """Log ``reason`` and close; a peer that did not prove itself is only told
        :data:`~orchagent.seed.protocol.NOT_AUTHENTICATED`, whatever the reason."""
        log.warn("seed receiver refused a connection from {peer}: {reason}", peer=self._peer(), reason=reason)
        if transfer is not None:
            transfer.last_refusal = f"refused a sender from {self._peer()}: {reason}"
        self._closed = True
        told = reason if authenticated else protocol.NOT_AUTHENTICATED
        self.transport.write(protocol.reason_frame(Kind.REFUSE, told))
        self.transport.loseConnection()

    def _send_progress(self) -> None:
        progress = self._transfer.progress
        self.transport.write(protocol.counts_frame(Kind.PROGRESS, progress.files_done, progress.bytes_done))

    def resume(self) -> None:
        """The writer made room in the pipe: read again (and that counts as progress)."""
        if not self._closed:
            self.resetTimeout()
            self.transport.resumeProducing()

    def timeoutConnection(self) -> None:
        what = "authenticate" if self._transfer is None else "send data"
        reason = f"the sender did not {what} for {self._stall_timeout:g} seconds"
        if self._transfer is None:
            self._refuse(reason)
        else:
            self._transfer._conclude(TransferFailed(f"seed {self._transfer.seed_id} stalled: {reason}"))

    def close(self, error: TransferFailed | None) -> None:
        if not self._closed and error is None:
            self.transport.write(protocol.done(self._session))
        super().close(error)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self._server.connections.closed()
        if self._handshake_due.active():
            self._handshake_due.cancel()
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        if self._transfer is not None:
            self._transfer.connection_lost()


class _ReceiverFactory(Factory):
    def __init__(self, server: SeedReceiverServer) -> None:
        self._server = server

    def buildProtocol(self, addr: Any) -> Protocol:
        return self._server.connections.build(lambda _: _ReceiverProtocol(self._server), addr)


class SeedReceiverServer:
    """The one seed listener of an agent; receives are armed per seed id."""

    def __init__(self, reactor: Any, secret: bytes, tls: Any = None, stall_timeout: float = 300,
                 sender_ous: Collection[str] = (), max_connections: int = 256, handshake_timeout: float = 30) -> None:
        """``tls``: an ``IOpenSSLServerConnectionCreator`` (e.g. ``CertificateOptions``) or None;
        ``sender_ous``: when given, a sender's certificate (``tls`` must verify it) needs one;
        ``max_connections`` open at once (new ones beyond are closed), each authenticated within
        ``handshake_timeout`` seconds."""
        if not secret and not sender_ous:
            raise ValueError("the built-in seed transfer needs SeedTransferSecret or SeedTransferValidOUs")
        if sender_ous and tls is None:
            raise ValueError("checking the sender's certificate (SeedTransferValidOUs) needs TLS")
        self._reactor = reactor
        self._secret = secret
        self._tls = tls
        self._sender_ous = frozenset(sender_ous)
        self.stall_timeout = stall_timeout
        self.connections = ConnectionCap(max_connections, "seed receiver")
        self.handshake_timeout = handshake_timeout
        self._armed: dict[str, _ReceiveTransfer] = {}
        self._port: Any = None

    def listen(self, endpoint: interfaces.IStreamServerEndpoint) -> Deferred:
        """Start listening; fires with the listening port."""
        factory: Factory = _ReceiverFactory(self)
        if self._tls is not None:
            factory = TLSMemoryBIOFactory(self._tls, False, factory)

        def listening(port: Any) -> Any:
            self._port = port
            return port

        return endpoint.listen(factory).addCallback(listening)

    def stopListening(self) -> Deferred:
        port, self._port = self._port, None
        return succeed(None) if port is None else port.stopListening()

    def arm(self, seed_id: str, datadir: str) -> Transfer:
        """Accept one sender for ``seed_id``, writing into ``datadir``; disarmed when it ends."""
        current = self._armed.get(seed_id)
        if current is not None and not current.done:
            raise Conflict(f"a receive for seed {seed_id} is already armed")
        transfer = _ReceiveTransfer(self._reactor, seed_id, datadir, self.stall_timeout)
        self._armed[seed_id] = transfer
        transfer.when_done().addBoth(lambda _: self._disarm(seed_id, transfer))
        return transfer

    def _disarm(self, seed_id: str, transfer: _ReceiveTransfer) -> None:
        if self._armed.get(seed_id) is transfer:
            del self._armed[seed_id]

    def certificate_problem(self, transport: Any) -> str | None:
        """Why the sender on ``transport`` may not send, by its certificate (None: it may)."""
        if not self._sender_ous:
            return None
        ous = peer_ous(transport)
        if ous is None:
            return ("the sender presented no client certificate; SeedTransferValidOUs requires one "
                    "(set SSLCertFile and SSLPrivateKeyFile on the source agent)")
        if not ous & self._sender_ous:
            shown = ", ".join(sorted(ous)) or "none"
            return (f"the sender's certificate has no OU from SeedTransferValidOUs "
                    f"(its OUs: {shown})")
        return None


# --- sending ---------------------------------------------------------------------------------


class _SendTransfer(Transfer):
    def __init__(self, reactor: Any, seed_id: str, source_dir: str, secret: bytes, stall_timeout: float) -> None:
        super().__init__(reactor, seed_id, "send", stall_timeout)
        self.source_dir = source_dir
        self._secret = secret
        self._connecting: Deferred | None = None

    def connect(self, endpoint: interfaces.IStreamClientEndpoint, where: str) -> None:
        self._connecting = connectProtocol(endpoint, _SenderProtocol(self))

        def failed(failure: Failure) -> None:
            if not self._concluded:
                self._conclude(TransferFailed(f"cannot connect to the seed receiver at {where}: "
                                              f"{failure.getErrorMessage()}"))

        self._connecting.addCallbacks(lambda _: None, failed)

    def authenticated(self, connection: _SenderProtocol, mac: protocol.StreamMac) -> None:
        self._begin()
        self._pipe = Pipe(PIPE_BYTES)
        self._channel = _SocketChannel.lend(connection.transport, self._stall_timeout, socket.SHUT_RDWR,
                                            f"seed {self.seed_id} stalled: the receiver did not take data "
                                            f"for {self._stall_timeout:g} seconds")
        if self._channel is None:
            connection.register_as_producer()
            self._start_worker(self._read, mac, lambda: self._reactor.callFromThread(self.pump))
        else:
            self._start_worker(self._read, mac, lambda: None)
            self._start_worker(self._send)

    def _read(self, mac: protocol.StreamMac, queued: Callable[[], None]) -> None:
        """Reader thread: walk, read and MAC the source into the pipe, a few MB ahead of the socket."""
        try:
            for batch in TreeReader(self.source_dir, mac).batches():
                self._pipe.put_wait(batch, batch.size)
                queued()
        finally:
            self._pipe.finish()

    def _send(self) -> None:
        """Sending thread (plain TCP): from the pipe straight onto the socket."""
        while (batch := self._pipe.get_wait()) is not None:
            self._count(batch)
            self._channel.send(batch.parts)

    def pump(self) -> None:
        """Reactor (TLS): move batches from the pipe to the transport until it asks for a pause."""
        connection = self._connection
        while not connection.paused and not self._concluded:
            batch = self._pipe.get()
            if batch is None:
                return
            if len(batch.parts) == 2:  # a DATA header and one large read: no joining copy of the read
                for part in batch.parts:
                    connection.transport.write(part)
            else:
                connection.transport.writeSequence(batch.parts)
            connection.resetTimeout()
            self._count(batch)

    def _count(self, batch: Batch) -> None:
        """Progress of what was handed to the socket (one thread per transfer does this)."""
        self.progress.bytes_done += batch.data_bytes
        self.progress.files_done += batch.files
        if batch.totals is not None:
            self.progress.files_total, self.progress.bytes_total = batch.totals
        if batch.final:
            self.state = "finishing"  # from here on the receiver's DONE is due

    def _worker_succeeded(self) -> None:
        pass  # everything is queued; success comes with the receiver's DONE

    def _conclude(self, error: TransferFailed | None) -> None:
        if self._connecting is not None and self._connection is None:
            self._connecting.cancel()
        super()._conclude(error)


@implementer(interfaces.IPushProducer)
class _SenderProtocol(_Connection):
    def __init__(self, transfer: _SendTransfer) -> None:
        super().__init__(transfer._reactor, transfer._stall_timeout)
        self._transfer = transfer
        self._nonce = protocol.new_nonce()
        self._session: protocol.Session | None = None
        self._accepted = False
        self._producing = False
        self.paused = False

    def connectionMade(self) -> None:
        super().connectionMade()
        if self._transfer._concluded:
            self.transport.abortConnection()
        else:
            self._transfer._connected(self)

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        self._frames.feed(data)
        try:
            for kind, payload in self._frames.frames():
                self._frame(kind, payload)
        except ProtocolError as e:
            self._transfer._conclude(TransferFailed(f"seed {self._transfer.seed_id}: {e}"))

    def _frame(self, kind: Kind, payload: bytes) -> None:
        transfer = self._transfer
        if kind == Kind.HELLO and self._session is None:
            self._session = protocol.Session.derive(transfer._secret, transfer.seed_id, protocol.parse_hello(payload),
                                                    self._nonce, _tls_material(self.transport))
            self.transport.write(protocol.auth(self._session))
        elif kind == Kind.ACCEPT and self._session is not None and not self._accepted:
            if not self._session.proves(b"receiver", payload):
                raise ProtocolError("the receiver's proof is wrong: the agents have different SeedTransferSecret "
                                    "values, or something between them relays the connection")
            self._accepted = True
            log.info("seed {seed_id}: sending {source} to {peer}", seed_id=transfer.seed_id,
                     source=transfer.source_dir, peer=self._peer())
            transfer.authenticated(self, self._session.stream_mac())
        elif kind == Kind.REFUSE:
            transfer._conclude(TransferFailed(f"the seed receiver at {self._peer()} refused seed "
                                              f"{transfer.seed_id}: {payload.decode('utf-8', 'replace')}"))
        elif kind == Kind.FAIL:
            transfer._conclude(TransferFailed(f"the seed receiver failed: {payload.decode('utf-8', 'replace')}"))
        elif kind == Kind.PROGRESS and self._accepted:
            pass  # a keepalive; resetTimeout above is its purpose
        elif kind == Kind.DONE and transfer.state == "finishing":
            if not self._session.proves(b"done", payload):
                raise ProtocolError("the receiver's confirmation is not authentic: something between the agents "
                                    "altered the connection")
            transfer._conclude(None)
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
        self._transfer._conclude(TransferFailed(
            f"seed {self._transfer.seed_id} stalled: the receiver did not {what} for {self._stall_timeout:g} seconds"))

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
        self._transfer._conclude(TransferFailed(
            f"seed {self._transfer.seed_id}: the connection to the receiver was lost before it confirmed "
            f"the seed ({reason.getErrorMessage()})"))
        self._transfer._disconnected()


def send_tree(reactor: Any, host: str, port: int, seed_id: str, source_dir: str, *, secret: bytes,
              tls: Any = None, stall_timeout: float = 300, connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
              ) -> Transfer:
    """Start sending ``source_dir`` to the receiver at ``host:port`` for ``seed_id``.

    ``tls``: an ``IOpenSSLClientConnectionCreator`` (e.g. ``optionsForClientTLS(host, trustRoot=...)``)
    or None for plain TCP.
    """
    transfer = _SendTransfer(reactor, seed_id, source_dir, secret, stall_timeout)
    endpoint: Any = HostnameEndpoint(reactor, host, port, timeout=connect_timeout)
    if tls is not None:
        endpoint = wrapClientTLS(tls, endpoint)
    transfer.connect(endpoint, f"{host}:{port}")
    return transfer
