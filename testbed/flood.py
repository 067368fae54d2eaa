"""Hostile connections for flood tests and the flood benchmark: idle ones and slowloris ones."""

from __future__ import annotations

import errno
import os
import resource
import socket
import threading
import time


def raise_open_files(needed: int) -> None:
    """This process holds every hostile socket: raise its soft limit (up to the hard one) if needed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise AssertionError(f"a flood of this size needs {needed} open files; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def open_files(pid: int) -> int:
    """How many descriptors process ``pid`` holds (its sockets among them)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


class Flood:
    """``count`` connections to ``address``: the first half idle, the second half slowloris (one
    header byte each every half second, never a whole request)."""

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
        request = b"GET /api/status HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"x" * 100_000
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
