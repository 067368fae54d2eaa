"""A plain TCP connection's socket, lent to a worker thread for the data stream.

The data then bypasses Twisted's buffers and the reactor (a quarter of the sender's CPU; see
``bench/RESULTS.md``).  :mod:`orchagent.seed.tlschannel` does the same for a TLS connection.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from orchagent.seed.pipe import Closed
from orchagent.seed.protocol import TransferFailed

_IOV_MAX = os.sysconf("SC_IOV_MAX")  # parts one sendmsg takes (a batch of empty files has thousands)


class Disconnected(Exception):
    """The peer closed or reset the connection while a worker sent on it; reading the connection
    (the reactor's, once the worker gave it back) tells why: the peer's FAIL frame, or its end."""


class Stalled(TransferFailed):
    """The connection carried nothing for the channel's silence limit (its socket's timeout): the
    transfer drops it and resumes over a new one (:mod:`orchagent.seed.resumption`), or, when it
    cannot (a hot seed), fails with this message."""


class SocketChannel:
    """The socket of a plain TCP connection, lent to a worker thread for the data stream.

    After the handshake the data goes straight between the workers and the socket: no copy into
    Twisted's buffers, no hand-off to the reactor per chunk.  Only one worker moves stream bytes
    while it holds the channel (the sender's reactor just reads the
    receiver's keepalives; the receiver's reactor stops reading and just writes keepalives), so
    nothing interleaves.  The worker uses a duplicate descriptor: Twisted may close its own at
    any time without the worker ever touching a closed or reused descriptor number.  The
    duplicate stays non-blocking (the flag is shared with Twisted's descriptor); the socket
    module's timeout mode waits with ``poll`` instead, whose timeout is the stall timer (:class:`Stalled`).
    """

    exclusive = False  # the reactor keeps using the connection meanwhile (see above)

    def __init__(self, handle: socket.socket, silence: float, interrupt: int, stalled: str) -> None:
        self._socket = handle.dup()
        self._socket.settimeout(silence)
        self._interrupt = interrupt
        self._interrupted = False
        self._stalled = stalled

    @classmethod
    def lend(cls, transport: Any, silence: float, interrupt: int, stalled: str) -> SocketChannel | None:
        """A channel over ``transport``'s socket, or None if it has none (TLS has its own channel,
        :class:`~orchagent.seed.tlschannel.TlsChannel`).

        ``interrupt`` is how :meth:`interrupt` shuts the socket down: the receiver only stops
        reading (its reactor still tells the sender why), the sender stops both directions.
        A send or receive that moves nothing for ``silence`` seconds raises :class:`Stalled` saying ``stalled``.
        """
        handle = transport.getHandle() if hasattr(transport, "getHandle") else None
        if not isinstance(handle, socket.socket) or handle.type != socket.SOCK_STREAM:
            return None
        return cls(handle, silence, interrupt, stalled)

    def send(self, parts: list[bytes]) -> None:
        """Worker: send all of ``parts`` (one ``sendmsg`` each time the socket has room)."""
        views = [memoryview(part) for part in parts]
        while views:
            if self._interrupted:
                raise Closed()
            try:
                sent = self._socket.sendmsg(views[:_IOV_MAX])
            except TimeoutError:
                raise Stalled(self._stalled) from None
            except (BrokenPipeError, ConnectionResetError):
                raise Disconnected() from None
            while sent:
                if sent >= len(views[0]):
                    sent -= len(views.pop(0))
                else:
                    views[0], sent = views[0][sent:], 0

    def receive(self, buffer: memoryview) -> memoryview | None:
        """Worker: the next bytes, received into ``buffer`` (a view of its start); None at the end."""
        if self._interrupted:
            raise Closed()  # the socket may still hold data (shutting reading down does not drop it)
        try:
            count = self._socket.recv_into(buffer)
        except TimeoutError:
            raise Stalled(self._stalled) from None
        except ConnectionResetError:
            return None
        return buffer[:count] if count else None

    def interrupt(self) -> None:
        """Reactor: wake the worker out of a wait on the socket (the transfer is over)."""
        self._interrupted = True
        try:
            self._socket.shutdown(self._interrupt)
        except OSError:
            pass  # already disconnected, which wakes it too

    def close(self) -> None:
        """Reactor, once the workers are gone: give the duplicate descriptor back."""
        self._socket.close()
