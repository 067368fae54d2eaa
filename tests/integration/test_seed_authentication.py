"""The built-in seed transfer against an attacker on loopback: data is authenticated end to end,
and a peer without the secret learns nothing about which seed is armed."""

from __future__ import annotations

import os
import socket
import statistics
import time

from twisted.internet import reactor, threads
from twisted.internet.endpoints import (
    SSL4ServerEndpoint, TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol, wrapClientTLS)
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from orchagent.config import Config
from orchagent.seed import authentication
from orchagent.seed.protocol import HEADER, Kind, TransferFailed
from orchagent.seed.receiver import SeedReceiverServer
from orchagent.seed.sender import send_tree
from orchagent.tls import client_creator, seed_server_options
from testbed.pki import CertificateAuthority
from tests.support.deferreds import inline
from tests.support.seed_mitm import RewritingRelay
from tests.support.seed_trees import build_tree

SECRET = b"correct horse battery staple"
MARKER = b"the row as the source wrote it. "
FORGED = b"the row as an attacker wants it."


class _Receiving:
    """A seed receiver on loopback that knows the secret."""

    async def _listen(self, stall_timeout: float = 10, tls=None) -> int:
        self.server = SeedReceiverServer(reactor, secret=SECRET, stall_timeout=stall_timeout, tls=tls)
        port = await self.server.listen(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))
        self.addCleanup(self.server.stopListening)
        return port.getHost().port


class ManInTheMiddleTests(_Receiving, TestCase):
    """A relay that passes the handshake on and rewrites file data, re-checksummed, fails the seed."""

    timeout = 60

    @inline
    async def test_rewritten_and_rechecksummed_data_fails_the_seed(self):
        base = self.mktemp()
        source, target = os.path.join(base, "source"), os.path.join(base, "target")
        build_tree(source, big_bytes=2 * 1024 * 1024, small_files=20)
        with open(os.path.join(source, "marked.ibd"), "wb") as f:
            f.write(MARKER * 4000)
        os.makedirs(target)
        port = await self._listen()
        relay = RewritingRelay(port, MARKER, FORGED)
        self.addCleanup(threads.deferToThread, relay.close)
        receiving = self.server.arm("7", target)
        sending = send_tree(reactor, "127.0.0.1", relay.port, "7", source, secret=SECRET)
        with self.assertRaises(TransferFailed) as caught:
            await receiving.when_done()
        self.assertEqual(relay.rewritten_files, 1)  # the attack took place
        self.assertEqual(receiving.state, "failed")  # completed, not succeeded
        self.assertIn("marked.ibd", str(caught.exception))
        self.assertIn("not authentic", str(caught.exception))
        with self.assertRaises(TransferFailed) as sender_side:  # the relay turned the receiver's FAIL into DONE
            await sending.when_done()
        self.assertRegex(str(sender_side.exception), "confirmation is not authentic|unexpected DONE")
        self.assertEqual(os.listdir(target), [])


class TlsRelayTests(_Receiving, TestCase):
    """A relay holding a trusted certificate, relaying the handshake between two TLS sessions, is refused."""

    timeout = 60

    @inline
    async def test_a_relay_that_terminates_tls_cannot_pass_the_handshake_on(self):
        # The relay has a certificate the sender trusts (a stolen host key, or a sender with
        # SSLSkipVerify) but not the secret: the proofs are bound to each end's TLS session.
        ca = CertificateAuthority(self.mktemp())
        receiver, relay = ca.issue("receiver"), ca.issue("relay")
        trusting = Config(use_ssl=True, ssl_ca_file=ca.cert)
        port = await self._listen(tls=seed_server_options(
            Config(use_ssl=True, ssl_cert_file=receiver.cert, ssl_private_key_file=receiver.key, ssl_ca_file=ca.cert)))
        upstream = wrapClientTLS(client_creator(trusting, "localhost"), TCP4ClientEndpoint(reactor, "127.0.0.1", port))
        relay_options = seed_server_options(
            Config(use_ssl=True, ssl_cert_file=relay.cert, ssl_private_key_file=relay.key, ssl_ca_file=ca.cert))
        listening = await SSL4ServerEndpoint(reactor, 0, relay_options, interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: _PlaintextRelay(upstream)))
        self.addCleanup(listening.stopListening)
        base = self.mktemp()
        source, target = os.path.join(base, "source"), os.path.join(base, "target")
        build_tree(source, big_bytes=1024, small_files=5)
        os.makedirs(target)
        receiving = self.server.arm("7", target)
        self.addCleanup(receiving.abort)
        sending = send_tree(reactor, "127.0.0.1", listening.getHost().port, "7", source, secret=SECRET,
                            tls=client_creator(trusting, "localhost"))
        with self.assertRaises(TransferFailed) as caught:
            await sending.when_done()
        self.assertIn(authentication.NOT_AUTHENTICATED, str(caught.exception))
        self.assertIn("relays the TLS connection", receiving.last_refusal)
        self.assertFalse(receiving.done)
        self.assertEqual(os.listdir(target), [])


class _PlaintextRelay(Protocol):
    """Ends the sender's TLS, opens its own to the receiver, and passes every byte on unchanged."""

    def __init__(self, upstream) -> None:
        self._upstream = upstream
        self._peer: Protocol | None = None

    def connectionMade(self) -> None:
        self.transport.pauseProducing()
        connectProtocol(self._upstream, _Upstream(self)).addErrback(lambda _: self.transport.loseConnection())

    def upstream_connected(self, peer: Protocol) -> None:
        self._peer = peer
        self.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        self._peer.transport.write(data)

    def connectionLost(self, reason) -> None:
        if self._peer is not None:
            self._peer.transport.loseConnection()


class _Upstream(Protocol):
    def __init__(self, downstream: _PlaintextRelay) -> None:
        self._downstream = downstream

    def connectionMade(self) -> None:
        self._downstream.upstream_connected(self)

    def dataReceived(self, data: bytes) -> None:
        self._downstream.transport.write(data)

    def connectionLost(self, reason) -> None:
        self._downstream.transport.loseConnection()


def _stray_attempt(port: int, seed_id: str) -> tuple[bytes, float]:
    """A peer without the secret: answers the challenge with a made-up proof for ``seed_id``.

    Returns everything the receiver sent after its challenge, and the seconds from sending the
    attempt until the receiver closed the connection.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        kind, length = HEADER.unpack(_exactly(s, HEADER.size))
        assert kind == Kind.HELLO
        _exactly(s, length)
        seed = seed_id.encode()
        attempt = bytes([len(seed)]) + seed + os.urandom(authentication.NONCE_BYTES) + bytes([0, 1]) + os.urandom(32)
        started = time.perf_counter()
        s.sendall(HEADER.pack(Kind.AUTH, len(attempt)) + attempt)
        answer = bytearray()
        while data := s.recv(65536):
            answer += data
        return bytes(answer), time.perf_counter() - started


def _exactly(s: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        more = s.recv(count - len(data))
        if not more:
            raise ConnectionError("the receiver closed the connection")
        data += more
    return data


class StrayPeerTests(_Receiving, TestCase):
    """A peer without the secret gets the same refusal, as fast, for an armed and an unarmed seed."""

    timeout = 60
    ROUNDS = 15

    @inline
    async def test_refusals_do_not_tell_which_seed_is_armed(self):
        port = await self._listen()
        target = self.mktemp()
        os.makedirs(target)
        armed = self.server.arm("7", target)
        self.addCleanup(armed.abort)
        answers: dict[str, set[bytes]] = {"7": set(), "8": set()}
        seconds: dict[str, list[float]] = {"7": [], "8": []}
        for _ in range(self.ROUNDS):
            for seed_id in ("7", "8"):
                answer, took = await threads.deferToThread(_stray_attempt, port, seed_id)
                answers[seed_id].add(answer)
                seconds[seed_id].append(took)
        self.assertEqual(len(answers["7"]), 1)
        self.assertEqual(answers["7"], answers["8"])  # byte for byte
        (answer,) = answers["7"]
        self.assertEqual(HEADER.unpack_from(answer)[0], Kind.REFUSE)
        self.assertNotIn(b"7", answer[HEADER.size:])
        self.assertNotIn(b"8", answer[HEADER.size:])
        fast, slow = sorted(statistics.median(seconds[seed_id]) for seed_id in seconds)
        self.assertLess(slow - fast, 0.005 + fast)  # loopback: any difference is noise
        self.assertFalse(armed.done)  # the attempts did not cancel the armed receive
        self.assertIn("SeedTransferSecret", armed.last_refusal)  # the detail stays here, and in the log
