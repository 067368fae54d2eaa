"""The receiving side's stream decoder: bytes in any chunking to handler calls, authenticated."""

from __future__ import annotations

import hmac
import os
from typing import Protocol

import zstandard

from orchagent.seed.authentication import TAG_BYTES, StreamMac
from orchagent.seed.protocol import (COUNTS, DATA_OFFSET, DATA_START, HEADER, MAX_BLOCK_BYTES, MAX_DATA_PAYLOAD,
                                     MAX_STREAM_BYTES, STREAM_ENTRY_PATH, ZDATA_HEADER, ChecksumMismatch, Entry,
                                     EntryKind, Kind, ProtocolError, TransferFailed, data_header, kind_of,
                                     parse_counts, parse_entry, parse_stream, payload_limit)


class StreamHandler(Protocol):
    """What :class:`StreamDecoder` calls, in stream order."""

    def totals(self, files: int, nbytes: int) -> None: ...

    def entry(self, entry: Entry) -> None: ...

    def stream(self, port: int) -> None:
        """A hot seed's stream begins (its data follows as one file's); ``port``: the source's MySQL port."""

    def data(self, offset: int, piece: memoryview) -> None:
        """``piece`` is a view of a received chunk, or of a decompressed block of its own."""

    def checkpoint(self, offset: int) -> None:
        """The current file's data below ``offset`` (and everything before it) is verified."""

    def file_end(self) -> None: ...

    def end(self, files: int, nbytes: int) -> None: ...


class StreamDecoder:
    """Turns the sender's byte stream (any chunking) into handler calls, authenticating it.

    Every file is checked at its FILE_END, before the handler hears of it, and the whole stream
    at END.  DATA payloads are handed on as slices of the received chunks, never copied or
    reassembled, so decoding costs one MAC update per piece.  A frame that lies whole in the chunk (nearly
    all of them) is parsed in place; only one cut by a chunk boundary is collected byte-wise.
    A ZDATA frame is collected whole and decompressed (to at most :data:`MAX_BLOCK_BYTES`); the MAC
    covers it as the DATA frame it decompresses to.  ``expanded``: the bytes decompression added.
    A file's data comes in rising offsets (a range's, inside the range its ENTRY names), so what
    arrived after its last tag lies past the offset that tag verified (a resume cuts it off there).

    One per connection.  ``resumed``: the file a resumed connection continues (its ENTRY comes
    again first, unchanged) and where its data continues, from its start (a range's: from the range's).
    """

    def __init__(self, handler: StreamHandler, mac: StreamMac, resumed: tuple[Entry, int] | None = None) -> None:
        self._handler = handler
        self._mac = mac
        self._pending = bytearray()  # an incomplete header or small frame
        self._data_left = 0  # bytes of the current DATA payload still to come
        self._data_at = 0  # file offset of the next data byte
        self._file: Entry | None = None
        self._stream_next: int | None = None  # in a hot seed's stream: the offset the next data must have
        self._data_end = 0  # in a file: where its last data ended (the next may not start before)
        self._resumed = resumed
        self._decompressor = zstandard.ZstdDecompressor()
        self.expanded = 0
        self.ended = False

    def feed(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        at, size = 0, len(view)
        while at < size:
            if self._data_left:
                take = min(self._data_left, size - at)
                piece = view[at:at + take]
                self._mac.update(piece)
                self._handler.data(self._data_at, piece)
                self._data_at += take
                self._data_left -= take
                at += take
            elif not self._pending and size - at >= DATA_START:
                at = self._take_whole_frame(view, at)
            else:
                at = self._take_frame(view, at)

    def _take_whole_frame(self, view: memoryview, at: int) -> int:
        """The fast path of :meth:`_take_frame`: the header, and a small payload, are all in ``view``."""
        kind, length = HEADER.unpack_from(view, at)
        if kind == Kind.DATA:
            if not DATA_OFFSET.size <= length <= MAX_DATA_PAYLOAD:
                raise ProtocolError(f"bad frame length {length} for frame kind {kind}")
            self._start_data(bytes(view[at:at + DATA_START]), length - DATA_OFFSET.size)
            return at + DATA_START
        end = at + HEADER.size + length
        if end > len(view):
            return self._take_frame(view, at)
        if length > payload_limit(kind):
            raise ProtocolError(f"bad frame length {length} for frame kind {kind}")
        self._dispatch(kind_of(kind), bytes(view[at + HEADER.size:end]))
        return end

    def _take_frame(self, view: memoryview, at: int) -> int:
        """Consume the header (and small payload) of one frame; return the new position."""
        pending = self._pending
        need = HEADER.size
        if len(pending) >= HEADER.size:
            kind, length = HEADER.unpack_from(pending)
            need += DATA_OFFSET.size if kind == Kind.DATA else length
        take = min(need - len(pending), len(view) - at)
        pending += view[at:at + take]
        at += take
        if len(pending) == HEADER.size:
            kind, length = HEADER.unpack_from(pending)
            if length > payload_limit(kind) or (kind == Kind.DATA and length < DATA_OFFSET.size):
                raise ProtocolError(f"bad frame length {length} for frame kind {kind}")
            if kind != Kind.DATA and length == 0:
                self._dispatch(kind_of(kind), b"")
                pending.clear()
            return at
        if len(pending) < HEADER.size:
            return at
        kind, length = HEADER.unpack_from(pending)
        if kind == Kind.DATA and len(pending) == HEADER.size + DATA_OFFSET.size:
            self._start_data(bytes(pending), length - DATA_OFFSET.size)
            pending.clear()
        elif kind != Kind.DATA and len(pending) == HEADER.size + length:
            self._dispatch(kind_of(kind), bytes(pending[HEADER.size:]))
            pending.clear()
        return at

    def _start_data(self, header: bytes, length: int) -> None:
        """``header``: the DATA frame's header and offset; ``length`` file bytes follow."""
        self._data_at, self._data_left = self._data_frame(header, length), length

    def _data_frame(self, header: bytes, length: int) -> int:
        """Check and MAC a DATA frame's ``header`` for ``length`` bytes; return their offset."""
        if self._file is None:
            raise ProtocolError("file data outside a file")
        (offset,) = DATA_OFFSET.unpack_from(header, HEADER.size)
        if offset + length > self._file.end:
            what = "the range of" if self._file.part else "the end of"
            raise ProtocolError(f"data beyond {what} {self._file.path!r}")
        if offset < self._data_end:
            raise ProtocolError(f"data of {self._file.path!r} out of order")
        self._data_end = offset + length
        if self._stream_next is not None:
            if offset != self._stream_next:
                raise ProtocolError(f"stream data at offset {offset}, expected {self._stream_next}")
            self._stream_next = offset + length
        self._mac.update(header)
        return offset

    def _dispatch(self, kind: Kind, payload: bytes) -> None:
        if self.ended:
            raise ProtocolError("frames after the end of the stream")
        if kind == Kind.FAIL:
            raise TransferFailed(f"the sender failed: {payload.decode('utf-8', 'replace')}")
        if self._resumed is not None and kind != Kind.TOTALS:
            self._resume(kind, payload)
            return
        if kind in (Kind.FILE_END, Kind.END, Kind.CHECKPOINT):
            self._check_tag(kind, payload)
        elif kind == Kind.ZDATA:
            self._compressed_data(payload)
            return
        else:
            self._mac.update(HEADER.pack(kind, len(payload)) + payload)
        if kind == Kind.ENTRY:
            if self._file is not None:
                raise ProtocolError(f"entry inside file {self._file.path!r}")
            entry = parse_entry(payload)
            if entry.kind == EntryKind.FILE:
                self._file, self._data_end = entry, entry.start
            self._handler.entry(entry)
        elif kind == Kind.STREAM:
            if self._file is not None or self._stream_next is not None:
                raise ProtocolError("a second stream, or one inside a file")
            port = parse_stream(payload)
            self._file = Entry(EntryKind.FILE, STREAM_ENTRY_PATH, 0o600, 0, MAX_STREAM_BYTES)
            self._stream_next = 0
            self._handler.stream(port)
        elif kind == Kind.CHECKPOINT:
            self._handler.checkpoint(self._data_end)
        elif kind == Kind.FILE_END:
            self._file = None
            self._handler.file_end()
        elif kind == Kind.TOTALS:
            self._handler.totals(*parse_counts(payload))
        elif kind == Kind.END:
            self.ended = True
            self._handler.end(*parse_counts(payload[:COUNTS.size]))
        else:
            raise ProtocolError(f"unexpected {kind.name} frame in the data stream")

    def _resume(self, kind: Kind, payload: bytes) -> None:
        """A resumed connection's first frame (after TOTALS): the ENTRY of the file in progress, unchanged."""
        file, offset = self._resumed
        if kind != Kind.ENTRY:
            raise ProtocolError(f"the resumed stream began with {kind.name}, not {file.path!r}")
        self._mac.update(HEADER.pack(kind, len(payload)) + payload)
        if parse_entry(payload) != file:
            raise ProtocolError(f"cannot resume {os.fsdecode(file.path)!r}: it changed at the source since "
                                "the seed began")
        self._resumed = None
        self._file, self._data_end = file, file.start + offset

    def _compressed_data(self, payload: bytes) -> None:
        """A ZDATA frame: decompress (bounded by the length it declares), MAC and hand on the data."""
        if len(payload) < ZDATA_HEADER.size:
            raise ProtocolError("malformed compressed data frame")
        offset, length = ZDATA_HEADER.unpack_from(payload)
        compressed = payload[ZDATA_HEADER.size:]
        if not 0 < length <= MAX_BLOCK_BYTES:
            raise ProtocolError(f"compressed block of {length} bytes (at most {MAX_BLOCK_BYTES} allowed)")
        header = data_header(offset, length)
        self._data_frame(header, length)
        try:
            if zstandard.frame_content_size(compressed) != length:
                raise zstandard.ZstdError("the frame's content size differs from the block's")
            data = self._decompressor.decompress(compressed, max_output_size=length)
        except zstandard.ZstdError as e:
            raise ProtocolError(f"a compressed block of {os.fsdecode(self._file.path)!r} is corrupt: {e}") from None
        if len(data) != length:
            raise ProtocolError(f"a compressed block of {os.fsdecode(self._file.path)!r} is corrupt: "
                                f"{len(data)} bytes instead of {length}")
        self._mac.update(data)
        self._handler.data(offset, memoryview(data))
        self.expanded += len(header) + length - HEADER.size - len(payload)

    def _check_tag(self, kind: Kind, payload: bytes) -> None:
        """FILE_END, CHECKPOINT and END: the tag at the payload's end must be the MAC of the stream up to it."""
        if kind != Kind.END and self._file is None:
            raise ProtocolError(f"{kind.name.lower().replace('_', ' ')} outside a file")
        if kind == Kind.END and self._file is not None:
            raise ProtocolError(f"stream ended inside file {self._file.path!r}")
        if len(payload) != (COUNTS.size + TAG_BYTES if kind == Kind.END else TAG_BYTES):
            raise ProtocolError(f"malformed {kind.name} frame")
        self._mac.update(HEADER.pack(kind, len(payload)) + payload[:-TAG_BYTES])
        if hmac.compare_digest(self._mac.tag(), payload[-TAG_BYTES:]):
            return
        if kind != Kind.END:
            raise ChecksumMismatch(f"{os.fsdecode(self._file.path)!r} is not authentic: its data or metadata "
                                   "changed in transit (corrupted, or altered on the network path)")
        raise ChecksumMismatch("the seed stream is not authentic: its directories, symlinks or frames "
                               "changed in transit (corrupted, or altered on the network path)")
