"""Copy an mbstream (xbstream) from stdin to stdout, flipping one byte in a data page of a user table.

The damage a bad disk, cable or memory on the source does before anything checks it: the stream
stays well-formed (every chunk header intact, so a transport passes it on untouched), but one
payload byte of the first InnoDB data file outside the system schema differs from what its chunk's
checksum covers.  ``mbstream -x`` must refuse it.  Run by :func:`testbed.hotseeding.damaging_backup_tool`.

MariaDB's format, chunk by chunk: ``XBSTCK01``, flags (1 byte), type (1 byte: ``P`` payload, ``E``
end of a file), path length (4 bytes, little-endian) and path; then, for ``P``, the payload length
and its offset in the file (8 bytes each), the payload's CRC32 (4 bytes) and the payload.
"""

from __future__ import annotations

import struct
import sys

MAGIC = b"XBSTCK01"
PIECE = 1 << 20
PAGE = 16384
SYSTEM_PREFIXES = (b"mysql/", b"sys/", b"performance_schema/")


def read_exactly(source, n: int) -> bytes:
    data = source.read(n)
    if len(data) != n:
        raise SystemExit(f"mbstream_damage: the stream ended inside a chunk ({len(data)} of {n} bytes)")
    return data


def copy_payload(source, sink, length: int, flip_at: int | None) -> None:
    """Copy ``length`` payload bytes, the one at ``flip_at`` (if any) inverted."""
    done = 0
    while done < length:
        piece = bytearray(read_exactly(source, min(PIECE, length - done)))
        if flip_at is not None and done <= flip_at < done + len(piece):
            piece[flip_at - done] ^= 0xFF
        sink.write(piece)
        done += len(piece)


def damage(source, sink) -> bool:
    """Copy the stream, damaging the first user table's data page; whether one was found."""
    damaged = False
    while header := source.read(len(MAGIC)):
        if header != MAGIC:
            raise SystemExit(f"mbstream_damage: no chunk magic ({header!r}): not an mbstream")
        flags_type_length = read_exactly(source, 6)
        chunk_type = flags_type_length[1:2]
        path = read_exactly(source, struct.unpack_from("<I", flags_type_length, 2)[0])
        sink.write(header + flags_type_length + path)
        if chunk_type == b"E":
            continue
        if chunk_type != b"P":
            raise SystemExit(f"mbstream_damage: unknown chunk type {chunk_type!r}")
        fields = read_exactly(source, 20)
        sink.write(fields)
        length = struct.unpack_from("<Q", fields)[0]
        flip_at = None
        if not damaged and path.endswith(b".ibd") and not path.startswith(SYSTEM_PREFIXES) and length > 4 * PAGE:
            flip_at, damaged = 3 * PAGE + 100, True  # inside the 4th page: a data page, not a header
        copy_payload(source, sink, length, flip_at)
    sink.flush()
    return damaged


if __name__ == "__main__":
    if not damage(sys.stdin.buffer, sys.stdout.buffer):
        sys.exit("mbstream_damage: the stream held no user table's data page to damage")
