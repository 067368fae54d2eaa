"""A private network with a shaped link, for seeds measured and tested as between two real hosts.

On plain loopback a seed is limited by the disk; between database hosts the link is.  A
:class:`NetworkNamespace` is a network namespace of its own whose loopback carries a ``tbf``
qdisc of the chosen rate (``1gbit``, ``100mbit``...).  Two agents bound to 127.0.0.1 and
127.0.0.2 inside it then talk over that link, and so do the baselines (``tar | socat``).  All
traffic stays inside the namespace::

    with NetworkNamespace(rate="1gbit") as net:
        agent = start_agent(settings, address="127.0.0.2", namespace=net)
        net.call(orchestrator.seed, target, source, 1)   # client code runs inside too
        net.run(["bash", "-c", "tar -c . | socat -u - TCP:127.0.0.2:9000"])

Processes run inside through ``ip netns exec``.  Test code that talks to them runs in
:meth:`call`, on a thread that has entered the namespace with ``setns(2)``: the network
namespace belongs to the thread, so the rest of the test process stays where it was, and a
socket made there keeps working from any thread.  :meth:`close` (also on a failed test, through
``addCleanup`` in :func:`network_namespace`) kills what was started inside and deletes the
namespace, which removes its qdisc.

``tbf`` needs a burst above the loopback's 64 KiB MTU, or every full-size packet is dropped.
This kernel has no ``netem``, so the link has a rate but no added latency.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading
import uuid
from typing import Any, Callable, Sequence

CLONE_NEWNET = 0x40000000
BURST = "256kb"
_libc = ctypes.CDLL(None, use_errno=True)


class NetworkNamespace:
    """A network namespace whose loopback is shaped to ``rate``, removed with its processes on close."""

    def __init__(self, rate: str | None = "1gbit", *, name: str | None = None):
        self.name = name or f"orchagent-{uuid.uuid4().hex[:8]}"
        self.rate = rate
        self._processes: list[subprocess.Popen] = []
        self._created = False

    def __enter__(self) -> NetworkNamespace:
        self.create()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def create(self) -> None:
        _ip("netns", "add", self.name)
        self._created = True
        try:
            _ip("-n", self.name, "link", "set", "lo", "up")
            if self.rate:
                self.set_rate(self.rate)
        except BaseException:
            self.close()
            raise

    def set_rate(self, rate: str) -> None:
        """Shape the namespace's loopback (both agents' link) to ``rate``, e.g. ``"100mbit"``."""
        _run(["tc", "-n", self.name, "qdisc", "replace", "dev", "lo", "root", "tbf", "rate", rate,
              "burst", BURST, "latency", "20ms"])
        self.rate = rate

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def popen(self, argv: Sequence[str], **options) -> subprocess.Popen:
        """Start a process inside; it is killed (with its session) at :meth:`close` if still running."""
        process = subprocess.Popen(self.argv(argv), start_new_session=True, **options)
        self._processes.append(process)
        return process

    def run(self, argv: Sequence[str], **options) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(argv), **options)

    def call(self, function: Callable[..., Any], *args, **kwargs) -> Any:
        """``function(*args, **kwargs)`` on a thread inside the namespace; its result or its exception."""
        outcome: list = []

        def inside() -> None:
            try:
                fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    if _libc.setns(fd, CLONE_NEWNET) != 0:
                        error = ctypes.get_errno()
                        raise OSError(error, f"setns into {self.name}: {os.strerror(error)}")
                finally:
                    os.close(fd)
                outcome.append((True, function(*args, **kwargs)))
            except BaseException as e:
                outcome.append((False, e))

        thread = threading.Thread(target=inside, name=f"in-{self.name}")
        thread.start()
        thread.join()
        ok, value = outcome[0]
        if not ok:
            raise value
        return value

    def close(self) -> None:
        for process in self._processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self._processes.clear()
        if self._created:
            _ip("netns", "delete", self.name)
            self._created = False


def network_namespace(test, rate: str | None = "1gbit") -> NetworkNamespace:
    """A namespace for one test, deleted when the test ends, passed or failed."""
    namespace = NetworkNamespace(rate)
    namespace.create()
    test.addCleanup(namespace.close)
    return namespace


def _ip(*args: str) -> None:
    _run(["ip", *args])


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stdout.strip()}")
