"""A slow network link between two agents, so a seed can be caught (and hurt) in flight.

On loopback a seed of a hundred MB is over in a fraction of a second.  The source agent sends
to ``<targetHost>:<its SeedTransferPort>``; point that at a :class:`SlowLink` listening on the
target's address, which forwards to the target's real seed port at ``rate`` bytes per second::

    link = SlowLink("127.0.0.2", upstream_port=target_seed_port, rate=16 * 2**20)
    # source agent: SeedTransferPort = link.port; target agent: SeedTransferPort = target_seed_port
    link.freeze()      # a stalled sender, as the receiver sees it: nothing moves, nothing closes
    link.stall()       # a frozen middlebox: the connections open now move nothing, ever; new ones pass
    link.stall_after(4096)  # and new ones stall once 4 KiB went through (a handshake passes, data not)
    link.cut()         # a relay killed and restarted: every connection through it drops, new ones pass
    link.close()

When either side closes or dies, the other side's connection is closed too, as a real TCP
path would do; not through a stalled connection, which tells neither side anything.  Threads,
not a reactor: the tests using it are synchronous.
"""

from __future__ import annotations

import socket
import threading
import time

CHUNK = 64 * 1024


class SlowLink:
    """A TCP relay to ``upstream_port`` at ``rate`` bytes per second towards it, which a test can freeze."""

    def __init__(self, address: str, upstream_port: int, rate: float | None = None, buffer_bytes: int = 0):
        """``buffer_bytes``: the relay's socket buffers, fixed (0: loopback's, which grow to MBs); small ones
        keep as little in flight as a real link's window does."""
        self.address = address
        self.upstream_port = upstream_port
        self.rate = rate  # bytes per second towards the upstream (the receiver); None: no limit
        self._frozen = threading.Event()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._stalled: set[socket.socket] = set()  # both ends of every stalled connection
        self._stall_after: int | None = None  # new connections stall once this many bytes went upstream
        self._accepted = 0
        self._lock = threading.Lock()
        self._buffer_bytes = buffer_bytes
        self._listener = socket.create_server((address, 0))
        if buffer_bytes:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_bytes)  # accepted ones inherit it
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True, name="slowlink-accept").start()

    def freeze(self) -> None:
        """Stop moving bytes in both directions, keeping every connection open."""
        self._frozen.set()

    def thaw(self) -> None:
        self._frozen.clear()

    def stall(self, which: int | None = None) -> None:
        """Stop moving bytes for good through every connection open now, or only the ``which``-th
        (0: the oldest), as a frozen middlebox or a black-holed route does: both ends stay open and
        hear nothing, not even the other end's close or reset.  New connections pass."""
        with self._lock:
            self._stalled.update(self._sockets if which is None else self._sockets[2 * which:2 * which + 2])

    def stall_after(self, nbytes: int) -> None:
        """Connections accepted from now on stall (as :meth:`stall` does) once ``nbytes`` went towards
        the upstream: a path that lets a handshake through but black-holes the data."""
        self._stall_after = nbytes

    def cut(self, which: int | None = None) -> None:
        """Drop every connection through the link (both ends see it close), or only the ``which``-th
        of those open (0: the oldest); new ones still pass."""
        with self._lock:
            if which is None:
                sockets, self._sockets = self._sockets, []
            else:
                sockets = self._sockets[2 * which:2 * which + 2]
                del self._sockets[2 * which:2 * which + 2]
        for s in sockets:
            close_socket(s)

    def cut_from(self, port: int) -> None:
        """Drop the connection that the receiver sees coming from ``port``."""
        with self._lock:
            ports = [upstream.getsockname()[1] for upstream in self._sockets[1::2]]
        self.cut(ports.index(port))

    @property
    def connections(self) -> int:
        """Connections accepted so far (a reconnecting sender makes one more)."""
        return self._accepted

    def close(self) -> None:
        self._closed.set()
        close_socket(self._listener)  # shut down first: a listener only closed goes on accepting
        self.cut()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                if self._buffer_bytes:
                    upstream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._buffer_bytes)
                upstream.settimeout(10)
                upstream.connect((self.address, self.upstream_port))
                upstream.settimeout(None)
            except OSError:
                close_socket(upstream)
                close_socket(downstream)
                continue
            with self._lock:
                self._sockets += [downstream, upstream]
                self._accepted += 1
            threading.Thread(target=self._pump, args=(downstream, upstream, True, self._stall_after),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, downstream, False), daemon=True).start()

    def _pump(self, reader: socket.socket, writer: socket.socket, throttled: bool,
              stall_after: int | None = None) -> None:
        try:
            while True:
                data = reader.recv(CHUNK)
                if stall_after is not None:
                    if len(data) > stall_after:
                        writer.sendall(data[:stall_after])  # what the path lets through; then nothing
                        self._stalled.update((reader, writer))
                    stall_after -= min(len(data), stall_after)
                while (self._frozen.is_set() or reader in self._stalled) and not self._closed.is_set():
                    time.sleep(0.05)  # here: what arrived while frozen does not get through either
                if reader in self._stalled:
                    return  # closed by close(): a stalled path tells nobody
                if not data:
                    writer.shutdown(socket.SHUT_WR)
                    return
                writer.sendall(data)
                if throttled and self.rate:
                    time.sleep(len(data) / self.rate)
        except OSError:
            if reader in self._stalled:
                return  # an end reset it: a stalled path tells nobody
            close_socket(reader)  # reset or closed: end the whole path, as a real one would
            close_socket(writer)


def close_socket(s: socket.socket) -> None:
    """Shut down first: that also wakes a thread blocked in ``recv`` on it."""
    for end in (lambda: s.shutdown(socket.SHUT_RDWR), s.close):
        try:
            end()
        except OSError:
            pass
