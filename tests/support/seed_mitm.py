"""A man in the middle of a built-in seed transfer, on loopback.

:class:`RewritingRelay` sits between the sender and the receiver (point the sender at
``relay.port``).  It passes the handshake on unchanged, in both directions, so both agents
authenticate each other as usual.  In the data stream it replaces ``old`` with ``new`` (same
length) in the data of every file, and for each file it changed it recomputes the checksum as
seed protocol version 1 did (plain SHA-256 of the ENTRY payload, then of every DATA frame's
offset and bytes) and puts that into the file's FILE_END frame.  Towards the sender it turns
the receiver's FAIL into a DONE, as version 1 wrote it (no payload).  Against version 1 the
receiver accepted the altered file (and a sender could be told of a success that was not);
the protocol must make both impossible.

Threads and blocking sockets, not a reactor, so it works under any test.  Frame layout is read
from :mod:`orchagent.seed.protocol` (``kind | length | payload``), the only thing it shares.
"""

from __future__ import annotations

import hashlib
import socket
import threading

from orchagent.seed.protocol import HEADER, Kind
from testbed.seed_link import close_socket

_DATA_OFFSET_BYTES = 8


class RewritingRelay:
    """Passes the handshake on, rewrites file data and forges v1 checksums in the stream (see the module)."""

    def __init__(self, upstream_port: int, old: bytes, new: bytes, address: str = "127.0.0.1") -> None:
        if len(old) != len(new):
            raise ValueError("the replacement must keep the data's length")
        self.old, self.new = old, new
        self.rewritten_files = 0  # files whose data this relay changed (and re-checksummed)
        self._upstream = (address, upstream_port)
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server((address, 0))
        self.port = self._listener.getsockname()[1]
        self._threads = [threading.Thread(target=self._accept, daemon=True, name="mitm-accept")]
        self._threads[0].start()

    def close(self) -> None:
        self._listener.close()
        for s in self._sockets:
            close_socket(s)
        for thread in self._threads:
            thread.join(10)

    def _accept(self) -> None:
        try:
            sender, _ = self._listener.accept()
        except OSError:
            return
        receiver = socket.create_connection(self._upstream, timeout=10)
        receiver.settimeout(None)
        self._sockets += [sender, receiver]
        for target, args in ((self._copy, (receiver, sender)), (self._rewrite, (sender, receiver))):
            thread = threading.Thread(target=target, args=args, daemon=True, name="mitm-relay")
            self._threads.append(thread)
            thread.start()

    def _copy(self, reader: socket.socket, writer: socket.socket) -> None:
        """Receiver to sender: HELLO, ACCEPT and keepalives untouched, a failure turned into DONE."""
        try:
            while (frame := _read_frame(reader)) is not None:
                kind, payload = frame
                if kind == Kind.FAIL:
                    kind, payload = Kind.DONE, b""
                writer.sendall(HEADER.pack(kind, len(payload)) + payload)
            writer.shutdown(socket.SHUT_WR)
        except OSError:
            close_socket(writer)

    def _rewrite(self, reader: socket.socket, writer: socket.socket) -> None:
        """Sender to receiver: AUTH untouched, then every frame parsed and maybe rewritten."""
        digest = None
        changed = False
        try:
            while (frame := _read_frame(reader)) is not None:
                kind, payload = frame
                if kind == Kind.ENTRY:
                    digest, changed = hashlib.sha256(payload), False
                elif kind == Kind.DATA and digest is not None:
                    data = payload[_DATA_OFFSET_BYTES:]
                    if self.old in data:
                        data, changed = data.replace(self.old, self.new), True
                    payload = payload[:_DATA_OFFSET_BYTES] + data
                    digest.update(payload[:_DATA_OFFSET_BYTES])
                    digest.update(data)
                elif kind == Kind.FILE_END and digest is not None:
                    if changed:
                        payload = digest.digest()
                        self.rewritten_files += 1
                    digest = None
                writer.sendall(HEADER.pack(kind, len(payload)) + payload)
            writer.shutdown(socket.SHUT_WR)
        except OSError:
            close_socket(writer)


def _read_frame(reader: socket.socket) -> tuple[int, bytes] | None:
    header = _read_exactly(reader, HEADER.size)
    if header is None:
        return None
    kind, length = HEADER.unpack(header)
    payload = _read_exactly(reader, length)
    if payload is None:
        raise OSError("the stream ended inside a frame")
    return kind, payload


def _read_exactly(reader: socket.socket, count: int) -> bytes | None:
    buffer = bytearray()
    while len(buffer) < count:
        data = reader.recv(count - len(buffer))
        if not data:
            if buffer:
                raise OSError("the stream ended inside a frame")
            return None
        buffer += data
    return bytes(buffer)
