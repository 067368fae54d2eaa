"""The seed transfer's handshake and the MAC over its data stream.

    receiver -> HELLO   magic, version, 32-byte receiver nonce      (nothing about what is armed)
    sender   -> AUTH    seed id, 32-byte sender nonce, lane, lanes, HMAC(K, "sender proof")
    receiver -> ACCEPT  HMAC(K, "receiver proof")                   or REFUSE reason, close

``K`` (:class:`Session`) is derived from ``SeedTransferSecret``, the seed id, both nonces and,
over TLS, keying material exported from the TLS session, and the lane: a seed sent over several
connections (``SeedParallelStreams``, :mod:`orchagent.seed.lanes`) has one handshake per lane,
which names its lane and how many there are, so a lane's key is its own.  One running HMAC
(:class:`StreamMac`) per connection covers every stream frame, and FILE_END and END carry its
tag.  It covers file data as sent uncompressed (a ZDATA frame counts as the DATA frame it
decompresses to), so what is verified is what the receiver writes.  Why: ``bench/RESULTS.md``.
"""

from __future__ import annotations

import hmac
import os
import struct

import attrs

from orchagent.seed.protocol import COUNTS, HEADER, Kind, ProtocolError, frame

MAGIC = b"ORCHSEED"
VERSION = 7  # 3: ZDATA frames (compressed file data); 4: STREAM (hot seeds); 5: RESUME, CHECKPOINT (resume);
# 6: the lane and lane count in AUTH and the session key (parallel streams); 7: a large file's ranges
# spread over the lanes (a file ENTRY's range)
NONCE_BYTES = 32
TAG_BYTES = 32  # HMAC-SHA256: the handshake's proofs and the stream's tags
TLS_EXPORTER_LABEL = b"EXPERIMENTAL-orchagent-seed-v3"  # RFC 5705: unregistered labels start so
TLS_EXPORTER_BYTES = 32
NOT_AUTHENTICATED = ("the sender was not authenticated: the agents' SeedTransferSecret values differ, or "
                     "its certificate does not pass SeedTransferValidOUs; the target agent's log says which")
MAX_SEED_ID_BYTES = 64
MAX_LANES = 16  # connections of one seed at most (SeedParallelStreams)
_HELLO = struct.Struct("!8sH32s")


def new_nonce() -> bytes:
    return os.urandom(NONCE_BYTES)


def hello(nonce: bytes) -> bytes:
    return frame(Kind.HELLO, _HELLO.pack(MAGIC, VERSION, nonce))


def parse_hello(payload: bytes) -> bytes:
    """The receiver's nonce, after checking this is our protocol in our version."""
    if len(payload) != _HELLO.size:
        raise ProtocolError("the peer is not an orchagent seed receiver")
    magic, version, nonce = _HELLO.unpack(payload)
    if magic != MAGIC:
        raise ProtocolError("the peer is not an orchagent seed receiver")
    if version != VERSION:
        raise ProtocolError(f"the receiver speaks seed protocol version {version}, this agent {VERSION}: "
                            "upgrade both agents to the same orchagent release")
    return nonce


def _check_seed_id(seed_id: str) -> bytes:
    seed = seed_id.encode()
    if not seed or len(seed) > MAX_SEED_ID_BYTES:
        raise ValueError(f"seed id must be 1 to {MAX_SEED_ID_BYTES} bytes")
    return seed


def _check_lane(lane: int, lanes: int) -> None:
    if not 0 <= lane < lanes <= MAX_LANES:
        raise ValueError(f"lane {lane} of {lanes}: a seed has 1 to {MAX_LANES} lanes, numbered from 0")


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, "sha256")


@attrs.frozen
class Session:
    """One handshake's key ``K`` and what is derived from it."""

    seed_id: str
    sender_nonce: bytes
    key: bytes = attrs.field(repr=False)
    lane: int = 0  # this connection's lane (0 to lanes - 1)
    lanes: int = 1  # the seed's connections

    @classmethod
    def derive(cls, secret: bytes, seed_id: str, receiver_nonce: bytes, sender_nonce: bytes,
               tls_material: bytes = b"", lane: int = 0, lanes: int = 1) -> Session:
        """``tls_material``: :data:`TLS_EXPORTER_BYTES` exported from the TLS session, empty on plain TCP."""
        seed = _check_seed_id(seed_id)
        _check_lane(lane, lanes)
        message = (b"orchagent seed v6 session\0" + bytes([len(seed)]) + seed + bytes([lane, lanes])
                   + receiver_nonce + sender_nonce + tls_material)
        return cls(seed_id, sender_nonce, _hmac(secret, message), lane, lanes)

    def proof(self, role: bytes) -> bytes:
        """What ``role`` (b"sender", b"receiver" or b"done") sends to prove it holds the key."""
        return _hmac(self.key, role + b" proof")

    def proves(self, role: bytes, proof: bytes) -> bool:
        return hmac.compare_digest(self.proof(role), proof)

    def sign(self, label: bytes, message: bytes) -> bytes:
        """A tag over ``message`` that only the two ends of this handshake can make (e.g. RESUME's)."""
        return _hmac(self.key, label + b"\0" + message)

    def signed(self, label: bytes, message: bytes, tag: bytes) -> bool:
        return hmac.compare_digest(self.sign(label, message), tag)

    def stream_mac(self) -> StreamMac:
        """A fresh MAC for this session's data stream (the sender and the receiver each make one)."""
        return StreamMac(_hmac(self.key, b"stream key"))


def auth(session: Session) -> bytes:
    seed = session.seed_id.encode()
    return frame(Kind.AUTH, bytes([len(seed)]) + seed + session.sender_nonce + bytes([session.lane, session.lanes])
                 + session.proof(b"sender"))


@attrs.frozen
class Auth:
    seed_id: str
    sender_nonce: bytes
    proof: bytes
    lane: int = 0
    lanes: int = 1

    def valid(self, session: Session) -> bool:
        return session.proves(b"sender", self.proof)


def parse_auth(payload: bytes) -> Auth:
    if (not payload or len(payload) != 1 + payload[0] + NONCE_BYTES + 2 + TAG_BYTES
            or not 0 < payload[0] <= MAX_SEED_ID_BYTES):
        raise ProtocolError("malformed authentication frame")
    end = 1 + payload[0]
    try:
        seed_id = payload[1:end].decode()
    except UnicodeDecodeError:
        raise ProtocolError("malformed seed id") from None
    lane, lanes = payload[end + NONCE_BYTES], payload[end + NONCE_BYTES + 1]
    if not lane < lanes <= MAX_LANES:
        raise ProtocolError(f"malformed authentication frame: lane {lane} of {lanes}")
    return Auth(seed_id, payload[end:end + NONCE_BYTES], payload[end + NONCE_BYTES + 2:], lane, lanes)


def accept(session: Session) -> bytes:
    return frame(Kind.ACCEPT, session.proof(b"receiver"))


def done(session: Session) -> bytes:
    return frame(Kind.DONE, session.proof(b"done"))


class StreamMac:
    """The running MAC over every stream frame, tags excepted; one thread uses it.

    The sender feeds it every frame it makes and builds the tagged frames with it; the
    receiver's decoder feeds it what arrived and checks the tags.
    """

    def __init__(self, key: bytes) -> None:
        self._mac = hmac.new(key, digestmod="sha256")  # OpenSSL's HMAC: releases the GIL on large updates
        self.update = self._mac.update

    def tag(self) -> bytes:
        """The MAC of the stream so far (the stream goes on)."""
        return self._mac.copy().digest()

    def file_end(self) -> bytes:
        return self._tagged(Kind.FILE_END)

    def checkpoint(self) -> bytes:
        """Inside a large file: what was sent of it so far is verified (a resume continues from there)."""
        return self._tagged(Kind.CHECKPOINT)

    def _tagged(self, kind: Kind) -> bytes:
        header = HEADER.pack(kind, TAG_BYTES)
        self.update(header)
        return header + self.tag()

    def end(self, files: int, nbytes: int) -> bytes:
        part = HEADER.pack(Kind.END, COUNTS.size + TAG_BYTES) + COUNTS.pack(files, nbytes)
        self.update(part)
        return part + self.tag()
