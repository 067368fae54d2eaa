"""The seed receiver's bounds in memory (StringTransport, a fake clock): handshake deadline, connection cap."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from orchagent.seed import authentication, protocol
from orchagent.seed.protocol import Kind
from orchagent.seed.receiver import SeedReceiverServer, _ReceiverFactory

PEER = IPv4Address("TCP", "127.0.0.1", 40000)


class SeedLimitTests(SynchronousTestCase):
    """A trickle of bytes cannot stretch the handshake; beyond the cap new connections are closed."""

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.server = SeedReceiverServer(self.clock, secret=b"s3cret", stall_timeout=300,
                                         max_connections=2, handshake_timeout=5)
        self.factory = _ReceiverFactory(self.server)

    def connect(self):
        connection = self.factory.buildProtocol(PEER)
        transport = StringTransport()
        connection.makeConnection(transport)
        return connection, transport

    def test_handshake_deadline_is_total(self):
        logged: list[str] = []
        globalLogPublisher.addObserver(observer := lambda event: logged.append(formatEvent(event)))
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        connection, transport = self.connect()
        transport.clear()
        for _ in range(4):
            connection.dataReceived(b"\x00")  # restarts the stall timer, not the deadline
            self.clock.advance(1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        frames = protocol.FrameBuffer()
        frames.feed(transport.value())
        (kind, reason), = frames.frames()
        self.assertEqual(kind, Kind.REFUSE)
        self.assertEqual(reason, authentication.NOT_AUTHENTICATED.encode())  # the peer learns nothing more
        self.assertTrue(transport.disconnecting)
        self.assertTrue(any("within 5 seconds (SeedHandshakeTimeoutSeconds)" in line for line in logged), logged)

    def test_connection_cap(self):
        first, _ = self.connect()
        self.connect()
        _, third = self.connect()
        self.assertTrue(third.disconnected)  # aborted at once
        first.connectionLost(None)
        _, fourth = self.connect()
        self.assertFalse(getattr(fourth, "disconnected", False))
