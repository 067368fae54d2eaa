"""A large file received in ranges over several lanes (parallel streams), put together once.

The sender cuts a large file into ranges (:func:`orchagent.seed.lanes.split`), each sent on one
lane as an entry of its own and verified by that lane's stream MAC as a whole file is (its ENTRY
names the path, size and range).  On the receiver, :class:`RangedFiles` (one per seed, shared by
its lanes' disk threads) makes each such file once in the staging tree, by the first lane to need
it, under a hidden partial name; every lane writes its ranges at their offsets through a
descriptor of its own.  Only at the seed's shared finish, once every lane verified its whole
stream, does :meth:`RangedFiles.seal` check that the verified ranges cover each file exactly and
give it its size, owner, mode, mtime and name: a file missing a range is never moved in.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from typing import Callable

import attrs

from orchagent.seed.authentication import MAX_LANES
from orchagent.seed.protocol import Entry, Part, ProtocolError, TransferFailed
from orchagent.seed.staging import Staging, seal_file

RANGES_PER_LANE = 4  # a file larger than this fraction of a lane's share goes in ranges (lanes.range_bytes)
# So no more files than this can be cut: a sender that sends more in ranges is not ours, and is
# refused before it makes the receiver hold a descriptor for each.
MAX_RANGED_FILES = MAX_LANES * RANGES_PER_LANE
_PUNCH_HOLE = 0x01 | 0x02  # FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE
_ZEROS_BYTES = 1024 * 1024  # where holes cannot be punched, zeros are written in pieces of this size
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)


@attrs.define
class _File:
    entry: Entry  # the file's entry without a range: what every range of it must announce
    name: bytes  # its partial name in its directory
    fd: int
    ranges: list[Part] = attrs.Factory(list)  # written and verified


class RangedFiles:
    """The files a receive gets in ranges, for all its lanes' disk threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[bytes, _File] = {}

    def open(self, entry: Entry, directory: int, create: Callable[[int], tuple[bytes, int]]) -> int:
        """A descriptor (the caller's to close) of the file ``entry`` is a range of, which the first lane
        to need it makes with ``create(directory)`` (its partial name and descriptor)."""
        whole = attrs.evolve(entry, part=None)
        with self._lock:
            file = self._files.get(entry.path)
            if file is None:
                if len(self._files) >= MAX_RANGED_FILES:
                    raise ProtocolError(f"more than {MAX_RANGED_FILES} files sent in ranges (a seed cuts at most "
                                        f"{RANGES_PER_LANE} per stream)")
                name, fd = create(directory)
                file = self._files[entry.path] = _File(whole, name, fd)
            elif file.entry != whole:
                raise ProtocolError(f"the ranges of {os.fsdecode(entry.path)!r} describe different files (size, "
                                    "mode, times or owner): it changed at the source while the seed was sent")
            return os.dup(file.fd)

    def arrived(self, entry: Entry) -> None:
        """A range is written, and its lane verified it (its FILE_END matched)."""
        with self._lock:
            self._files[entry.path].ranges.append(entry.part)

    def seal(self, staging: Staging) -> None:
        """Once per seed, after every lane's stream was verified whole: give each file its size, owner,
        mode, mtime and name, if its verified ranges cover it exactly (else the seed fails)."""
        owner = staging.owner if os.geteuid() == 0 else None
        with self._lock:
            files = list(self._files.items())
        for path, file in files:
            if not _covers(file.ranges, file.entry.size):
                raise TransferFailed(f"{os.fsdecode(path)!r} did not arrive whole: its {len(file.ranges)} verified "
                                     f"ranges hold {sum(length for _, length in file.ranges)} bytes and do not "
                                     f"cover its {file.entry.size} exactly")
            parent, _, name = path.rpartition(b"/")
            directory = staging.open_tree_directory(parent)
            try:
                seal_file(file.fd, file.entry, owner)
                os.rename(file.name, name, src_dir_fd=directory, dst_dir_fd=directory)
            finally:
                os.close(directory)
            with self._lock:
                del self._files[path]
            os.close(file.fd)

    def close(self) -> None:
        """The receive ended: let go of the files (in the staging tree, which goes with it)."""
        with self._lock:
            files, self._files = self._files, {}
        for file in files.values():
            os.close(file.fd)


def _covers(ranges: list[Part], size: int) -> bool:
    """Whether ``ranges`` make up [0, ``size``) exactly: no gap, no byte twice."""
    covered = 0
    for offset, length in sorted(ranges):
        if offset != covered:
            return False
        covered += length
    return covered == size


def punch(fd: int, offset: int, length: int) -> None:
    """Throw away a file's bytes in [``offset``, ``offset + length``) (they read as zeros again), keeping
    the rest and the size: a range's unverified bytes, which a resumed stream may not cover again (it
    does not send the source's holes), in a file other lanes write too."""
    if length <= 0 or _libc.fallocate(fd, _PUNCH_HOLE, offset, length) == 0:
        return
    err = ctypes.get_errno()
    if err != errno.EOPNOTSUPP:
        raise OSError(err, os.strerror(err))
    zeros = bytes(min(length, _ZEROS_BYTES))
    while length:
        written = os.pwrite(fd, zeros[:length], offset)
        offset, length = offset + written, length - written
