"""zstd for the seed stream's file data (``SeedCompression``): which blocks go compressed.

``none`` sends every block raw; ``zstd`` compresses every block with zstd -1 and sends it so
whenever that is smaller; ``auto`` (the default) measures instead of guessing.  It starts raw and
times windows of data: a window in which the reader waited for the link (the pipe to the socket
was full) says the link is the limit, so the next one goes compressed; a compressed window that
did not wait for the link (the CPU became the limit) is compared with the last raw one, and the
faster way is kept, the other tried again now and then.  A window that did not wait for the link
while raw stays raw: the disk or the CPU is the limit, and compressing would only cost CPU.  In
``auto`` a block that does not shrink by :data:`AUTO_MIN_SAVING` goes raw.  Why:
``bench/RESULTS.md``.  The compressor runs in the sender's reader thread; zstandard's C code
releases the GIL.
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
FIRST_WINDOW_BYTES = 16 * 1024 * 1024  # auto: the first (raw) one: enough to fill the pipe and wait
PROBE_EVERY = 8  # auto: windows the slower way is not tried again (unless it was never tried)
LINK_BOUND_SHARE = 0.2  # auto: the link is the limit when the reader waited this share of a window


class BlockCompressor:
    """Turns one block of file data into a ZDATA frame, or says to send it raw; one thread uses it.

    ``waited``: the seconds the reader has waited so far for room towards the link (``auto``).
    """

    def __init__(self, mode: str, waited: Callable[[], float] = lambda: 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown compression {mode!r}, expected one of {', '.join(MODES)}")
        self._mode = mode
        self._compressor = zstandard.ZstdCompressor(level=LEVEL)
        self._waited = waited
        self._clock = clock
        self._compressing = mode == "zstd"
        self._rates: dict[bool, float] = {}  # auto: data bytes per second of the last window each way
        self._window_start: float | None = None
        self._window_waited = 0.0
        self._window_bytes = 0
        self._windows = 0  # auto: windows since the last change of way

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
        """auto: once a window's blocks are all through, choose how to send the next one."""
        now, waited = self._clock(), self._waited()
        if self._window_start is None:
            self._window_start, self._window_waited = now, waited
        elif self._window_bytes >= (WINDOW_BYTES if self._rates else FIRST_WINDOW_BYTES):
            elapsed = max(now - self._window_start, 1e-6)
            link_bound = waited - self._window_waited > LINK_BOUND_SHARE * elapsed
            self._choose(self._window_bytes / elapsed, link_bound)
            self._window_start, self._window_waited, self._window_bytes = now, waited, 0
        self._window_bytes += nbytes

    def _choose(self, rate: float, link_bound: bool) -> None:
        self._rates[self._compressing] = rate
        self._windows += 1
        # Raw and not waiting for the link: compressing would only cost CPU.  Compressing and
        # still waiting for the link: raw would wait longer.  Otherwise the other way may be faster.
        if link_bound != self._compressing:
            other = self._rates.get(not self._compressing)
            if other is None or other > rate or self._windows >= PROBE_EVERY:
                self._compressing = not self._compressing
                self._windows = 0
