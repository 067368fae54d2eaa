"""zstd for the seed stream's file data (``SeedCompression``): which blocks go compressed.

``none`` sends every block raw; ``zstd`` compresses every block with zstd -1 and sends it so
whenever that is smaller; ``auto`` (the default) measures instead of guessing: it times windows
of data sent compressed and sent raw, keeps doing whichever moved data faster end to end (the
reader waits for the socket, so a window's time is the link's or the disk's or the CPU's,
whichever is the limit), and tries the other one again now and then; a block that does not
shrink by :data:`AUTO_MIN_SAVING` goes raw.  So a slow link gets compression, and a link faster
than the disk (or a CPU too busy to compress) gets raw blocks.  Why: ``bench/RESULTS.md``.
The compressor runs in the sender's reader thread; zstandard's C code releases the GIL.
"""

from __future__ import annotations

import time
from typing import Callable

import zstandard

from orchagent.seed.protocol import MAX_BLOCK_BYTES, ZDATA_HEADER, zdata_frame

MODES = ("auto", "zstd", "none")
LEVEL = 1  # zstd -1: several hundred MB/s per core, far above a 1 Gbit/s link
AUTO_MIN_SAVING = 0.05  # auto: a block must shrink by this fraction to be worth decompressing
WINDOW_BYTES = 32 * 1024 * 1024  # auto: data timed per decision (several times the sender's pipe)
PROBE_EVERY = 8  # auto: windows of the better way between two tries of the other


class BlockCompressor:
    """Turns one block of file data into a ZDATA frame, or says to send it raw; one thread uses it."""

    def __init__(self, mode: str, clock: Callable[[], float] = time.monotonic) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown compression {mode!r}, expected one of {', '.join(MODES)}")
        self._mode = mode
        self._compressor = zstandard.ZstdCompressor(level=LEVEL)
        self._clock = clock
        self._compressing = mode != "none"
        self._rates: dict[bool, float] = {}  # auto: data bytes per second, compressing or not
        self._window_start: float | None = None
        self._window_bytes = 0
        self._windows = 0

    def compress(self, offset: int, data: bytes) -> bytes | None:
        """The ZDATA frame for ``data`` at ``offset``, or None to send it as a DATA frame."""
        if self._mode == "auto":
            self._measure(len(data))
        if not self._compressing or len(data) > MAX_BLOCK_BYTES:
            return None
        compressed = self._compressor.compress(data)
        limit = len(data) * (1 - AUTO_MIN_SAVING) if self._mode == "auto" else len(data) - ZDATA_HEADER.size
        if len(compressed) >= limit:
            return None
        return zdata_frame(offset, len(data), compressed)

    def _measure(self, nbytes: int) -> None:
        """auto: once a window's blocks are all through, record its rate and choose how to send the next."""
        now = self._clock()
        if self._window_start is None:
            self._window_start = now
        elif self._window_bytes >= WINDOW_BYTES:
            self._rates[self._compressing] = self._window_bytes / max(now - self._window_start, 1e-6)
            self._window_start, self._window_bytes = now, 0
            self._windows += 1
            if len(self._rates) < 2 or self._windows % PROBE_EVERY == 0:
                self._compressing = not self._compressing  # measure the other way (again)
            else:
                self._compressing = self._rates[True] > self._rates[False]
        self._window_bytes += nbytes
