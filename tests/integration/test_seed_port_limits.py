"""The seed port's bounds on real loopback sockets: a connection cap and a total handshake deadline."""

from __future__ import annotations

import socket
import time

from twisted.internet import reactor, threads
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import TestCase

from orchagent.seed.receiver import SeedReceiverServer


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the peer closes ``sock`` within ``seconds`` (whatever it sends first)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not sock.recv(65536):
                return True
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True
    return False


class SeedPortLimitTests(TestCase):
    """A trickling peer is cut at SeedHandshakeTimeoutSeconds; beyond the cap new peers are closed."""

    timeout = 30

    async def _listen(self, **limits) -> int:
        server = SeedReceiverServer(reactor, secret=b"secret", stall_timeout=300, **limits)
        port = await server.listen(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))
        self.addCleanup(server.stopListening)
        return port.getHost().port

    async def test_trickling_handshake_is_cut_at_the_deadline(self):
        port = await self._listen(handshake_timeout=1)

        def trickle() -> float:
            started = time.monotonic()
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                for _ in range(40):  # one byte every 0.1 s: the stall timer (300 s) never fires
                    try:
                        sock.send(b"\x00")
                    except OSError:
                        break
                    if closed_within(sock, 0.1):
                        break
                return time.monotonic() - started

        elapsed = await threads.deferToThread(trickle)
        self.assertLess(elapsed, 3, "a trickling peer held the seed port past SeedHandshakeTimeoutSeconds")

    async def test_connections_beyond_the_cap_are_closed(self):
        port = await self._listen(max_connections=3)

        def flood() -> tuple[list[bool], bool]:
            held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
            try:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
                        extra_closed = closed_within(extra, 2)
                except ConnectionResetError:
                    extra_closed = True  # closed even before connect() returned
                return [closed_within(sock, 0.2) for sock in held], extra_closed
            finally:
                for sock in held:
                    sock.close()

        held_closed, extra_closed = await threads.deferToThread(flood)
        self.assertEqual(held_closed, [False, False, False])
        self.assertTrue(extra_closed, "a fourth connection stayed open with SeedTransferMaxConnections 3")

        def one_more() -> bool:
            time.sleep(0.2)
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                return closed_within(sock, 0.5)

        self.assertFalse(await threads.deferToThread(one_more), "the count did not go down when peers left")
