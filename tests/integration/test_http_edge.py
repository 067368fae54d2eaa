"""The API's edge on a real twistd agent, over raw loopback sockets: what a peer may cost before a handler runs."""

from __future__ import annotations

import re
import socket
import ssl
import tempfile
import time

from twisted.trial.unittest import SynchronousTestCase

from testbed.agent import start_agent
from testbed.pki import CertificateAuthority

#: A body no agent should ever read from a stranger (the issue's 400 MB).
HUGE = 400 * 1024 * 1024


def connect(agent, timeout: float = 5) -> socket.socket:
    sock = socket.create_connection((agent.address, agent.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_closed(sock: socket.socket, timeout: float = 5) -> tuple[bytes, bool]:
    """Everything the agent sends within ``timeout``, and whether it then closed the connection."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return data, False
        except (ConnectionResetError, ssl.SSLEOFError):
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


class BodyBeforeAuthTests(SynchronousTestCase):
    """Route, method, token and body size are decided from the headers: a refused body is never read."""

    @classmethod
    def setUpClass(cls):
        cls.agent = start_agent({"ApplyRelaylogMaxBytes": 1000})

    @classmethod
    def tearDownClass(cls):
        cls.agent.stop()

    def refused_before_body(self, head: str, status: int) -> bytes:
        """Send only ``head``; the answer must come, and the connection close, without the body."""
        with connect(self.agent) as sock:
            sock.sendall(head.encode("ascii"))
            response, closed = read_until_closed(sock)
        self.assertEqual(status_of(response), status, response[:300])
        self.assertIn(b"\r\nConnection: close\r\n", response)
        self.assertTrue(closed, "the agent kept the connection open, waiting for the body")
        return response

    def test_unauthenticated_huge_post(self):
        response = self.refused_before_body(
            f"POST /api/apply-relaylog-contents HTTP/1.1\r\nHost: a\r\nContent-Length: {HUGE}\r\n\r\n", 401)
        self.assertIn(b"Invalid token", response)

    def test_refusal_is_not_followed_by_100_continue(self):
        response = self.refused_before_body(
            f"POST /api/apply-relaylog-contents HTTP/1.1\r\nHost: a\r\nContent-Length: {HUGE}\r\n"
            "Expect: 100-continue\r\n\r\n", 401)
        self.assertNotIn(b"100 Continue", response)

    def test_huge_post_to_unknown_path(self):
        self.refused_before_body(f"POST /nowhere HTTP/1.1\r\nHost: a\r\nContent-Length: {HUGE}\r\n\r\n", 404)

    def test_huge_post_to_get_route(self):
        response = self.refused_before_body(
            f"POST /api/hostname HTTP/1.1\r\nHost: a\r\nContent-Length: {HUGE}\r\n\r\n", 405)
        self.assertIn(b"\r\nAllow: GET, HEAD\r\n", response)

    def test_get_with_a_body(self):
        response = self.refused_before_body("GET /api/hostname HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n", 413)
        self.assertIn(b"takes no request body", response)

    def test_chunked_body_on_get_route(self):
        self.refused_before_body("GET /api/hostname HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", 413)

    def test_announced_body_over_the_limit(self):
        response = self.refused_before_body(
            f"POST /api/apply-relaylog-contents?token={self.agent.token} HTTP/1.1\r\nHost: a\r\n"
            "Content-Length: 1001\r\n\r\n", 413)
        self.assertIn(b"ApplyRelaylogMaxBytes", response)

    def test_chunked_body_over_the_limit(self):
        """Refused once 1000 bytes have streamed in, without waiting for the last chunk."""
        with connect(self.agent) as sock:
            sock.sendall(f"POST /api/apply-relaylog-contents?token={self.agent.token} HTTP/1.1\r\nHost: a\r\n"
                         "Transfer-Encoding: chunked\r\n\r\n".encode("ascii"))
            sock.sendall(b"258\r\n" + b"A" * 600 + b"\r\n")
            sock.sendall(b"258\r\n" + b"A" * 600 + b"\r\n")
            response, closed = read_until_closed(sock)
        self.assertEqual(status_of(response), 413, response[:300])
        self.assertIn(b"ApplyRelaylogMaxBytes", response)
        self.assertTrue(closed)

    def test_body_within_the_limit_reaches_the_handler(self):
        """An authenticated body under the limit is read and handed on (the handler's own 400)."""
        with connect(self.agent) as sock:
            sock.sendall(f"POST /api/apply-relaylog-contents?token={self.agent.token} HTTP/1.1\r\nHost: a\r\n"
                         "Content-Length: 5\r\nConnection: close\r\n\r\nnot64".encode("ascii"))
            response, closed = read_until_closed(sock)
        self.assertEqual(status_of(response), 400, response[:300])

    def test_keep_alive_still_works(self):
        """Two bodiless requests on one connection, the usual way."""
        with connect(self.agent) as sock:
            for _ in range(2):
                sock.sendall(b"GET /api/hostname HTTP/1.1\r\nHost: a\r\n\r\n")
                sock.settimeout(5)
                response = sock.recv(65536)
                self.assertEqual(status_of(response), 200, response[:300])


class HostValueTests(SynchronousTestCase):
    """A host with a hostile IPv6 zone id is refused before it reaches a command or the environment."""

    def test_zone_id_with_shell_syntax(self):
        agent = start_agent({})
        try:
            with connect(agent) as sock:
                sock.sendall(f"GET /api/send-mysql-seed-data/%3A%3A1%25%3Bid/7?token={agent.token} HTTP/1.1\r\n"
                             "Host: a\r\nConnection: close\r\n\r\n".encode("ascii"))
                response, _ = read_until_closed(sock)
                self.assertEqual(status_of(response), 400, response[:300])
                self.assertIn(b"zone id", response)
            with connect(agent) as sock:
                sock.sendall(f"GET /api/post-copy?sourceHost=fe80::1%25eth0%20-x&token={agent.token} HTTP/1.1\r\n"
                             "Host: a\r\nConnection: close\r\n\r\n".encode("ascii"))
                response, _ = read_until_closed(sock)
                self.assertEqual(status_of(response), 400, response[:300])
        finally:
            agent.stop()


class ConnectionLimitTests(SynchronousTestCase):
    """The header deadline ends slowloris and idle connections; the cap closes new connections early."""

    def test_slowloris_is_cut_at_the_header_deadline(self):
        agent = start_agent({"HTTPHeaderTimeoutSeconds": 1})
        try:
            with connect(agent) as sock, connect(agent) as idle:
                started = time.monotonic()
                closed = False
                for byte in b"GET /api/hostname HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"x" * 40:
                    try:
                        sock.send(bytes([byte]))  # one byte every 0.2 s: the idle timer never fires
                    except OSError:
                        closed = True
                        break
                    time.sleep(0.2)
                    if time.monotonic() - started > 4:
                        break
                if not closed:
                    _, closed = read_until_closed(sock, timeout=0.5)
                self.assertTrue(closed, "a slowloris kept its connection past HTTPHeaderTimeoutSeconds")
                self.assertLess(time.monotonic() - started, 4)
                _, idle_closed = read_until_closed(idle, timeout=1)
                self.assertTrue(idle_closed, "an idle connection outlived HTTPHeaderTimeoutSeconds")
            with connect(agent) as sock:
                sock.sendall(b"GET /api/hostname HTTP/1.1\r\nHost: a\r\n\r\n")
                self.assertEqual(status_of(sock.recv(65536)), 200)
        finally:
            agent.stop()

    def test_slow_reader_gets_its_whole_response(self):
        """The deadline for the next request's headers closes after a response, never through it."""
        agent = start_agent({"HTTPHeaderTimeoutSeconds": 1,
                             "CustomCommands": {"big": "head -c 900000 /dev/zero | tr '\\0' x"}})
        try:
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a slow, small reader
                sock.connect((agent.address, agent.port))
                sock.sendall(f"GET /api/custom-commands/big?token={agent.token} HTTP/1.1\r\nHost: a\r\n\r\n"
                             .encode("ascii"))
                time.sleep(2.5)
                response, closed = read_until_closed(sock, timeout=10)
            head, _, body = response.partition(b"\r\n\r\n")
            self.assertEqual(status_of(head), 200, head)
            length = int(re.search(rb"\r\nContent-Length: (\d+)", head).group(1))
            self.assertEqual(len(body), length)
            self.assertIn(b"x" * 899_000, body)
            self.assertTrue(closed, "the idle connection outlived HTTPHeaderTimeoutSeconds")
        finally:
            agent.stop()

    def test_new_connections_beyond_the_cap_are_closed(self):
        agent = start_agent({"HTTPMaxConnections": 5, "HTTPHeaderTimeoutSeconds": 60})
        held = []
        try:
            held.append(connect(agent))
            held[0].sendall(b"GET /api/hostname HTTP/1.1\r\nHost: a\r\n\r\n")
            self.assertEqual(status_of(held[0].recv(65536)), 200)
            held += [connect(agent) for _ in range(4)]
            try:
                with connect(agent) as extra:
                    _, closed = read_until_closed(extra, timeout=2)
            except ConnectionResetError:
                closed = True  # closed even before connect() returned
            self.assertTrue(closed, "a sixth connection stayed open with HTTPMaxConnections 5")
            held[0].sendall(b"GET /api/hostname HTTP/1.1\r\nHost: a\r\n\r\n")  # the open ones go on
            self.assertEqual(status_of(held[0].recv(65536)), 200)
            held.pop().close()
            time.sleep(0.2)
            with connect(agent) as again:
                again.sendall(b"GET /api/hostname HTTP/1.1\r\nHost: a\r\n\r\n")
                self.assertEqual(status_of(again.recv(65536)), 200)
            self.assertIn("closing new ones", agent.log())
        finally:
            for sock in held:
                sock.close()
            agent.stop()



class TlsEdgeTests(SynchronousTestCase):
    """Under TLS too: a refused body is not read, and connections beyond the cap are closed."""

    def test_refusal_and_cap_over_tls(self):
        ca = CertificateAuthority(tempfile.mkdtemp(prefix="orchagent-edge-ca-"))
        server = ca.issue("agent")
        agent = start_agent({"UseSSL": True, "SSLCertFile": server.cert, "SSLPrivateKeyFile": server.key,
                             "SSLCAFile": ca.cert, "HTTPMaxConnections": 2, "HTTPHeaderTimeoutSeconds": 60})
        context = ssl.create_default_context(cafile=ca.cert)
        try:
            with context.wrap_socket(connect(agent), server_hostname="127.0.0.1") as sock:
                sock.sendall(f"POST /api/apply-relaylog-contents HTTP/1.1\r\nHost: a\r\n"
                             f"Content-Length: {HUGE}\r\n\r\n".encode("ascii"))
                response, closed = read_until_closed(sock)
            self.assertEqual(status_of(response), 401, response[:300])
            self.assertTrue(closed)
            with context.wrap_socket(connect(agent), server_hostname="127.0.0.1") as one, \
                    context.wrap_socket(connect(agent), server_hostname="127.0.0.1") as two:
                try:
                    with connect(agent) as extra:
                        _, closed = read_until_closed(extra, timeout=2)
                except ConnectionResetError:
                    closed = True
                self.assertTrue(closed, "a third connection stayed open with HTTPMaxConnections 2")
                for sock in (one, two):
                    sock.sendall(b"GET /api/hostname HTTP/1.1\r\nHost: a\r\n\r\n")
                    self.assertEqual(status_of(sock.recv(65536)), 200)
        finally:
            agent.stop()
