"""The receiving side of the built-in seed transfer: the seed port, armed per seed id.

    server = SeedReceiverServer(reactor, secret=b"...", tls=None, stall_timeout=300, sender_ous=())
    port = await server.listen(endpoint)          # e.g. tcp:21234:interface=10.0.0.5
    transfer = server.arm("42", "/var/lib/mysql")  # accept one sender at a time for seed 42

Whether a seed id is armed is looked at only once the sender proved itself, so a stray peer
learns nothing and cannot cancel a seed; an armed receive that no sender authenticates for
within ``stall_timeout`` fails, naming the last refusal, and so does one whose connection
dropped and that no sender resumes within as long (:mod:`orchagent.seed.resumption`); a connection
that carries nothing for half of it (a stall) is dropped, and the sender has the other half.  A seed sent
over several connections is received as one transfer per lane (:mod:`orchagent.seed.lanes`).

This module is the port: the handshake, refusals and keepalives of each connection; what an
accepted connection's data does is :class:`~orchagent.seed.receive.ReceiveTransfer`'s.
"""

from __future__ import annotations

from typing import Any, Collection

from twisted.internet import interfaces
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from orchagent import logs
from orchagent.connections import ConnectionCap
from orchagent.errors import Conflict
from orchagent.seed import authentication, protocol
from orchagent.seed.hotseed import Extractor
from orchagent.seed.lanes import ReceiveLanes, SharedStaging
from orchagent.seed.protocol import Kind, ProtocolError, TransferFailed
from orchagent.seed.receive import ReceiveTransfer
from orchagent.seed.resumption import Received
from orchagent.seed.transfer import Connection, tls_keying_material
from orchagent.tls import peer_ous

log = logs.logger(__name__)


class _ReceiverProtocol(Connection):
    def __init__(self, server: SeedReceiverServer) -> None:
        super().__init__(server.reactor, server.stall_timeout)
        self._server = server
        self._nonce = authentication.new_nonce()
        self._transfer: ReceiveTransfer | None = None
        self._session: authentication.Session | None = None  # once the sender is accepted
        self._keepalive: LoopingCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        # The stall timer restarts on every byte; this one does not, so a trickle cannot hold the port.
        self._handshake_due = self._reactor.callLater(self._server.handshake_timeout, self._handshake_expired)
        self.transport.write(authentication.hello(self._nonce))

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
                self._authenticate(authentication.parse_auth(payload))
                break
        except ProtocolError as e:
            self._refuse(str(e))
            return
        if self._transfer is not None:
            self._handshake_due.cancel()
            self._transfer.attach(self, self._frames.leftover(), self._session)

    def _authenticate(self, auth: authentication.Auth) -> None:
        """Accept the sender, or refuse it.

        Whether the seed id is armed is looked at only once the sender has proved itself, and
        the same work is done for any seed id before that: a peer without the secret gets the
        same refusal, as fast, for an armed seed as for any other.
        """
        tls_material = tls_keying_material(self.transport)
        session = self._server.session(auth, self._nonce, tls_material)
        armed = transfer = self._server.armed(auth.seed_id)
        problem = self._server.certificate_problem(self.transport)
        if problem is None and not auth.valid(session):
            problem = "the sender's proof is wrong: the agents have different SeedTransferSecret values"
            if tls_material:
                problem += " (or something between them terminates and relays the TLS connection)"
        if problem is None and armed is not None and not armed.concluded:
            transfer = armed.lane(auth.lane, auth.lanes)
        if problem is not None:
            where = "" if transfer is not None else ", which is not armed here"
            self._refuse(f"{problem} (seed {auth.seed_id}{where})", transfer)
        elif isinstance(transfer, str):
            self._refuse(transfer, armed, authenticated=True)
        elif (transfer is None or transfer.concluded) and (auth.seed_id in self._server.received
                                                           or (transfer is not None and transfer.error is None)):
            log.info("seed {seed_id}: the sender reconnected after the seed arrived whole; confirming it again",
                     seed_id=auth.seed_id)
            self._closed = True
            self.transport.write(authentication.accept(session) + authentication.done(session))
            self.transport.loseConnection()
        elif transfer is None or transfer.concluded:
            failure = self._server.received.failure(auth.seed_id) if transfer is None else str(transfer.error)
            self._refuse(f"no receive is armed for seed {auth.seed_id}" if failure is None else
                         f"seed {auth.seed_id} failed here: {failure}", authenticated=True)
        elif transfer.connected:  # one sender at a time; a reconnecting one tries again (BUSY)
            self._refuse(f"seed {auth.seed_id} is already receiving from another sender", transfer,
                         authenticated=True, kind=Kind.BUSY)
        else:
            lane = f" (stream {auth.lane + 1} of {auth.lanes})" if auth.lanes > 1 else ""
            log.info("seed {seed_id}: receiving into {datadir} from {peer}{lane}",
                     seed_id=auth.seed_id, datadir=transfer.datadir, peer=self._peer(), lane=lane)
            self.transport.write(authentication.accept(session))
            self._transfer, self._session = transfer, session
            self._keepalive = LoopingCall(self._send_progress)
            self._keepalive.clock = self._reactor
            # well inside the sender's silence limit (resumption.silence_limit): half as long at most
            self._keepalive.start(max(0.1, min(10.0, self._stall_timeout / 4)), now=False)

    def _refuse(self, reason: str, transfer: ReceiveTransfer | ReceiveLanes | None = None, *,
                authenticated: bool = False, kind: Kind = Kind.REFUSE) -> None:
        """Log ``reason`` and close; a peer that did not prove itself is only told
        :data:`~orchagent.seed.authentication.NOT_AUTHENTICATED`, whatever the reason."""
        log.warn("seed receiver refused a connection from {peer}: {reason}", peer=self._peer(), reason=reason)
        if transfer is not None:
            transfer.last_refusal = f"refused a sender from {self._peer()}: {reason}"
        self._closed = True
        told = reason if authenticated else authentication.NOT_AUTHENTICATED
        self.transport.write(protocol.reason_frame(kind, told))
        self.transport.loseConnection()

    def _send_progress(self) -> None:
        if self.lent:
            return  # TLS: the worker holds the connection; the sender's stall timer is its socket's meanwhile
        progress = self._transfer.progress
        self.transport.write(protocol.counts_frame(Kind.PROGRESS, progress.files_done, progress.bytes_done))

    def timeoutConnection(self) -> None:
        what = "authenticate" if self._transfer is None else "send data"
        reason = f"the sender did not {what} for {self._stall_timeout:g} seconds"
        if self._transfer is None:
            self._refuse(reason)
        else:
            self._transfer.conclude(TransferFailed(f"seed {self._transfer.seed_id} stalled: {reason}"))

    def close(self, error: TransferFailed | None) -> None:
        if not self._closed and error is None:
            self.transport.write(authentication.done(self._session))
        super().close(error)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self._server.connections.closed()
        if self._handshake_due.active():
            self._handshake_due.cancel()
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        if self._transfer is not None:
            self._transfer.connection_closed()


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
        self.reactor = reactor
        self._secret = secret
        self._tls = tls
        self._sender_ous = frozenset(sender_ous)
        self.stall_timeout = stall_timeout
        self.connections = ConnectionCap(max_connections, "seed receiver")
        self.handshake_timeout = handshake_timeout
        self._armed: dict[str, ReceiveLanes] = {}
        self.received = Received(reactor, stall_timeout)
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

    def arm(self, seed_id: str, datadir: str, extractor: Extractor | None = None) -> ReceiveLanes:
        """Accept one sender for ``seed_id``, writing into ``datadir``; disarmed when it ends.
        ``extractor``: what unpacks a hot seed's stream (:mod:`orchagent.seed.hotseed`), if one comes."""
        current = self._armed.get(seed_id)
        if current is not None and not current.done:
            raise Conflict(f"a receive for seed {seed_id} is already armed")
        shared = SharedStaging(datadir, seed_id)

        def make_lane() -> ReceiveTransfer:
            return ReceiveTransfer(self.reactor, seed_id, datadir, self.stall_timeout, extractor, shared)

        transfer = ReceiveLanes(seed_id, datadir, shared, make_lane(), make_lane)
        self.received.forget(seed_id)
        self._armed[seed_id] = transfer
        transfer.when_done().addBoth(lambda _: self._disarm(seed_id, transfer))
        return transfer

    def armed(self, seed_id: str) -> ReceiveLanes | None:
        """The receive armed for ``seed_id``, if there is one."""
        return self._armed.get(seed_id)

    def session(self, auth: authentication.Auth, receiver_nonce: bytes,
                tls_material: bytes) -> authentication.Session:
        """The session a sender that sent ``auth`` shares with us if it holds our secret."""
        return authentication.Session.derive(self._secret, auth.seed_id, receiver_nonce, auth.sender_nonce,
                                             tls_material, auth.lane, auth.lanes)

    def _disarm(self, seed_id: str, transfer: ReceiveLanes) -> None:
        if self._armed.get(seed_id) is transfer:
            del self._armed[seed_id]
        self.received.add(seed_id, None if transfer.succeeded else str(transfer.error))

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
