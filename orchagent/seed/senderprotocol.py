"""The sender's side of one seed connection: the handshake and the receiver's answers.

The receiver says HELLO, the sender proves the shared secret (AUTH), the receiver proves it back
(ACCEPT) and says where the stream begins (RESUME); from then on only keepalives (PROGRESS), its
DONE or why it failed come back.  What the answers mean for the seed (begin, resume, reconnect,
fail) the transfer decides (:mod:`orchagent.seed.sender`); this module only speaks the protocol
(:mod:`orchagent.seed.protocol`, :mod:`orchagent.seed.authentication`).
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.python.failure import Failure

from orchagent import logs
from orchagent.seed import authentication
from orchagent.seed.protocol import Kind, ProtocolError, TransferFailed
from orchagent.seed.resumption import ResumePoint, parse_resume
from orchagent.seed.transfer import Connection, tls_keying_material

log = logs.logger(__name__)


class SendingTransfer(Protocol):
    """What a :class:`SenderProtocol` asks of the send it carries."""

    seed_id: str
    source_dir: str
    state: str

    @property
    def concluded(self) -> bool: ...
    @property
    def reconnecting(self) -> bool: ...
    @property
    def lane_name(self) -> str: ...
    def connection_opened(self, connection: Connection) -> None: ...
    def session(self, receiver_nonce: bytes, sender_nonce: bytes,
                tls_material: bytes) -> authentication.Session: ...
    def authenticated(self, connection: SenderProtocol, mac: authentication.StreamMac, point: ResumePoint) -> None: ...
    def stalled(self, connection: SenderProtocol) -> None: ...
    def connection_lost(self, connection: SenderProtocol, reason: str) -> None: ...
    def conclude(self, error: TransferFailed | None) -> None: ...


class SenderProtocol(Connection):
    """One connection of a send: proves the agents to each other, learns where to begin, and
    watches the receiver's answers until its DONE."""

    def __init__(self, transfer: SendingTransfer, reactor: Any, stall_timeout: float) -> None:
        super().__init__(reactor, stall_timeout)
        self._transfer = transfer
        self._nonce = authentication.new_nonce()
        self._session: authentication.Session | None = None
        self._proved = False  # the receiver proved itself (ACCEPT); its RESUME is due
        self.accepted = False  # and said where to begin: the stream flows
        self._busy = ""  # why a reconnection attempt was turned away for now

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
        elif kind == Kind.ACCEPT and self._session is not None and not self._proved:
            if not self._session.proves(b"receiver", payload):
                raise ProtocolError("the receiver's proof is wrong: the agents have different SeedTransferSecret "
                                    "values, or something between them relays the connection")
            self._proved = True
        elif kind == Kind.RESUME and self._proved and not self.accepted:
            point = parse_resume(self._session, payload)
            self.accepted = True
            log.info("seed {seed_id}: sending {source} to {peer}{lane}", seed_id=transfer.seed_id,
                     source=transfer.source_dir, peer=self._peer(), lane=transfer.lane_name)
            transfer.authenticated(self, self._session.stream_mac(), point)
        elif kind == Kind.BUSY and transfer.reconnecting:
            reason = payload.decode("utf-8", "replace")
            self._busy = f"the receiver is still winding up the dropped connection ({reason})"
            self.transport.loseConnection()
        elif kind in (Kind.REFUSE, Kind.BUSY):
            transfer.conclude(TransferFailed(f"the seed receiver at {self._peer()} refused seed "
                                             f"{transfer.seed_id}: {payload.decode('utf-8', 'replace')}"))
        elif kind == Kind.FAIL:
            transfer.conclude(TransferFailed(f"the seed receiver failed: {payload.decode('utf-8', 'replace')}"))
        elif kind == Kind.PROGRESS and self.accepted:
            pass  # a keepalive; resetTimeout above is its purpose
        elif kind == Kind.DONE and (transfer.state == "finishing"
                                    or (transfer.reconnecting and self._proved and not self.accepted)):
            # (the latter: the receiver had the whole seed when the connection dropped)
            if not self._session.proves(b"done", payload):
                raise ProtocolError("the receiver's confirmation is not authentic: something between the agents "
                                    "altered the connection")
            transfer.conclude(None)
        else:
            raise ProtocolError(f"unexpected {kind.name} frame from the receiver")

    def timeoutConnection(self) -> None:
        """Nothing came from the receiver for the silence limit (the transfer's; it set ours)."""
        transfer = self._transfer
        if self.accepted:
            transfer.stalled(self)
        elif transfer.reconnecting:
            self._busy = f"the receiver did not answer for {self._stall_timeout:g} s"
            self.transport.abortConnection()  # connectionLost: the attempt failed, the next one follows
        else:
            transfer.conclude(TransferFailed(
                f"seed {transfer.seed_id} stalled: the receiver did not answer for {self._stall_timeout:g} seconds"))

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self._transfer.connection_lost(self, self._busy or reason.getErrorMessage())
