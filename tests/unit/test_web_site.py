"""The HTTP edge (orchagent.web.site) in memory: an ApiSite's channel on a StringTransport and a Clock.

These run against whichever Twisted is installed (the .deb build runs them on Debian's 22.4), so
they also check the channel internals the edge relies on.
"""

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from orchagent.token import Token
from orchagent.web.resource import ApiResource, Guard
from orchagent.web.routes import Route
from orchagent.web.site import ApiSite

TOKEN = "cd" * 32


async def ok(req):
    return {"body": req.body.read().decode() if req.body is not None else None}


ROUTES = (
    Route("GET", "/api/hostname", ok, token=False),
    Route("POST", "/api/apply", ok, max_body=10),
)


def aborted(transport) -> bool:
    return getattr(transport, "disconnected", False)  # StringTransport.abortConnection sets it


class EdgeTests(SynchronousTestCase):
    """Refusals are decided from the headers; the header deadline and the connection cap hold."""

    def setUp(self):
        self.clock = Clock()
        self.site = ApiSite(ApiResource(ROUTES, Guard(token=Token(TOKEN)), self.clock), reactor=self.clock,
                            max_connections=2, header_timeout=5)

    def connect(self):
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
        transport = StringTransport()
        channel.makeConnection(transport)
        return channel, transport

    def test_refused_from_the_headers(self):
        for head, status in [
            (b"POST /api/apply HTTP/1.1\r\nContent-Length: 400000000\r\n\r\n", b"401"),
            (b"POST /nowhere HTTP/1.1\r\nContent-Length: 400000000\r\n\r\n", b"404"),
            (b"PUT /api/hostname HTTP/1.1\r\nContent-Length: 5\r\n\r\n", b"405"),
            (b"GET /api/hostname HTTP/1.1\r\nContent-Length: 5\r\n\r\n", b"413"),
            (b"POST /api/apply?token=" + TOKEN.encode() + b" HTTP/1.1\r\nContent-Length: 11\r\n\r\n", b"413"),
        ]:
            channel, transport = self.connect()
            channel.dataReceived(head)
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 " + status), (head, transport.value()[:80]))
            self.assertIn(b"\r\nConnection: close\r\n", transport.value())
            self.assertTrue(transport.disconnecting)
            channel.connectionLost(None)

    def test_refusals_at_the_edge_reach_the_observers(self):
        """Audit log and metrics see a request refused from its headers like any other answer."""
        seen = []

        class Observer:
            def request_done(self, answered):
                seen.append(answered)

        self.site = ApiSite(ApiResource(ROUTES, Guard(token=Token(TOKEN)), self.clock, [Observer()]),
                            reactor=self.clock, max_connections=2, header_timeout=5)
        channel, transport = self.connect()
        channel.dataReceived(b"POST /api/apply?token=wrong HTTP/1.1\r\nContent-Length: 400000000\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 401"))
        [answered] = seen
        self.assertEqual((answered.code, answered.route.pattern, answered.method, answered.client),
                         (401, "/api/apply", "POST", transport.getPeer().host))
        self.assertTrue(answered.message.startswith("Invalid token"))
        self.assertEqual(answered.query, {})  # the token never reaches an observer

    def test_refused_request_is_never_handled(self):
        """Even if the body still arrives (TLS may deliver records read before the close)."""
        channel, transport = self.connect()
        channel.dataReceived(b"GET /api/hostname HTTP/1.1\r\nContent-Length: 5\r\n\r\n")
        channel.dataReceived(b"hello")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413"))
        self.assertEqual(transport.value().count(b"HTTP/1.1 "), 1, transport.value())

    def test_chunked_body_counted(self):
        channel, transport = self.connect()
        channel.dataReceived(b"POST /api/apply?token=" + TOKEN.encode()
                             + b" HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n")
        self.assertEqual(transport.value(), b"")
        channel.dataReceived(b"8\r\n12345678\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413"))
        self.assertIn(b"ApplyRelaylogMaxBytes", transport.value())

    def test_body_within_the_limit_reaches_the_handler(self):
        channel, transport = self.connect()
        channel.dataReceived(b"POST /api/apply?token=" + TOKEN.encode()
                             + b" HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200"), transport.value()[:80])
        self.assertTrue(transport.value().endswith(b'{"body":"hello"}'))

    def test_header_deadline_is_total(self):
        channel, transport = self.connect()
        for byte in b"GET /api/hostname HTTP/1.1\r\n":
            channel.dataReceived(bytes([byte]))  # each byte restarts the idle timer, not the deadline
            self.clock.advance(0.2)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(aborted(transport))  # what was written is still sent
        self.clock.advance(channel.abortTimeout)
        self.assertTrue(aborted(transport))  # unless the peer reads nothing at all

    def test_deadline_rearmed_for_the_next_request(self):
        channel, transport = self.connect()
        channel.dataReceived(b"GET /api/hostname HTTP/1.1\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200"))
        self.clock.advance(4)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_connection_cap(self):
        first, _ = self.connect()
        self.connect()
        _, third = self.connect()
        self.assertTrue(aborted(third))
        first.connectionLost(None)
        _, fourth = self.connect()
        self.assertFalse(aborted(fourth))
