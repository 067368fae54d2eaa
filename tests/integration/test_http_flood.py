"""A real twistd agent keeps answering /api/status and orchestrator's 9-GET poll while 2,000 hostile
connections (idle ones and slowloris ones) are open, started as systemd starts services (1,024 open files)."""

from __future__ import annotations

import errno
import http.client
import os
import resource
import socket
import threading
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.support.agent import start_agent
from tests.support.orchestrator import HostAgent, Orchestrator

HOSTILE = 2000
#: Generous: the benchmark (bench/flood.py) measures the latency; this only says the agent answers.
ANSWER_WITHIN = 10.0


def raise_open_files(needed: int) -> None:
    """This process holds every hostile socket: raise its soft limit (up to the hard one) if needed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise AssertionError(f"the flood test needs {needed} open files; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


class Flood:
    """``count`` connections to ``address``: the first half idle, the second half slowloris."""

    def __init__(self, address: tuple[str, int], count: int):
        self.sockets = []
        for number in range(count):
            if number % 40 == 39:
                time.sleep(0.02)  # paced like a real flood, so each one reaches the agent (not a dropped SYN)
            sock = socket.socket()
            sock.setblocking(False)
            if sock.connect_ex(address) not in (0, errno.EINPROGRESS):
                sock.close()
                continue
            self.sockets.append(sock)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)
        self._thread.start()

    def _trickle(self) -> None:
        """One header byte per slowloris connection every half second: never a whole request."""
        request = b"GET /api/status HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"x" * 1000
        sent = 0
        while not self._stop.wait(0.5):
            for sock in self.sockets[len(self.sockets) // 2:]:
                try:
                    sock.send(request[sent:sent + 1])
                except OSError:
                    pass
            sent += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for sock in self.sockets:
            sock.close()


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class FloodTests(SynchronousTestCase):
    """2,000 hostile connections: the API still answers the status endpoint and the 9-GET poll."""

    def test_status_and_poll_answer_under_flood(self):
        raise_open_files(HOSTILE + 500)
        # systemd's default for services: a soft limit of 1,024 open files (the hard one is higher).
        agent = start_agent({"HTTPHeaderTimeoutSeconds": 60}, open_files=(1024, HOSTILE * 4))
        flood = None
        try:
            started = time.monotonic()
            flood = Flood((agent.address, agent.port), HOSTILE)
            while open_files(agent.process.pid) < HOSTILE and time.monotonic() - started < 5:
                time.sleep(0.1)  # until the agent holds them all (it never does at 1,024 files)

            asked = time.monotonic()
            connection = http.client.HTTPConnection(agent.address, agent.port, timeout=ANSWER_WITHIN)
            try:
                connection.request("GET", "/api/status")
                self.assertEqual(connection.getresponse().status, 200)
            except OSError as e:
                self.fail(f"/api/status did not answer under the flood: {e!r}")
            finally:
                connection.close()
            Orchestrator(timeout=ANSWER_WITHIN).get_agent(HostAgent.of(agent))  # raises without an answer
            self.assertLess(time.monotonic() - asked, ANSWER_WITHIN)

            self.assertGreaterEqual(open_files(agent.process.pid), HOSTILE,
                                    "the agent did not hold the hostile connections while answering")
        finally:
            if flood is not None:
                flood.close()
            agent.stop()
