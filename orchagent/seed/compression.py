"""zstd for the seed stream's file data (``SeedCompression``): which blocks go compressed.

``none`` sends every block raw; ``zstd`` compresses every block with zstd -1 and sends it so
whenever that is smaller; ``auto`` (the default) measures instead of guessing.  It starts raw and
times windows of data.  A raw window in which the reader waited for the link (the pipe to the
socket was full) says the link is the limit, so the next one goes compressed; raw windows that
did not wait stay raw (the disk or the CPU is the limit, and compressing would only cost CPU).
While compressed windows still wait for the link, the level goes up by one per window (to
:data:`MAX_LEVEL`), and down again once the reader hardly waits; a compressed window at level 1
that did not wait for the link (the CPU became the limit) is compared with the last raw one and
the faster way is kept, the other tried again now and then.  In ``auto`` a block that does not
shrink by :data:`AUTO_MIN_SAVING` goes raw.  Why: ``bench/RESULTS.md``.  The compressor runs in
the sender's reader thread; zstandard's C code releases the GIL.
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
PROBE_EVERY = 8  # auto: windows the slower way is not tried again (unless it was never tried)
LINK_BOUND_SHARE = 0.2  # auto: the link is the limit when the reader waited this share of a window
CPU_BOUND_SHARE = 0.05  # auto: and the CPU when it waited less than this share
MAX_LEVEL = 6  # auto: the highest level it raises to while the link is the limit (over 100 MB/s per core)


class BlockCompressor:
    """Turns one block of file data into a ZDATA frame, or says to send it raw; one thread uses it.

    ``waited``: the seconds the reader has waited so far for room towards the link (``auto``).
    """

    def __init__(self, mode: str, waited: Callable[[], float] = lambda: 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown compression {mode!r}, expected one of {', '.join(MODES)}")
        self._mode = mode
        self._compressors: dict[int, zstandard.ZstdCompressor] = {}
        self.level = LEVEL
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
        if self.level not in self._compressors:
            self._compressors[self.level] = zstandard.ZstdCompressor(level=self.level)
        compressed = self._compressors[self.level].compress(data)
        limit = len(data) * (1 - AUTO_MIN_SAVING) if self._mode == "auto" else len(data) - ZDATA_HEADER.size
        if len(compressed) >= limit:
            return None
        return zdata_frame(offset, len(data), compressed)

    def _measure(self, nbytes: int) -> None:
        """auto: once a window's blocks are all through, choose how to send the next one."""
        now, waited = self._clock(), self._waited()
        if self._window_start is None:
            self._window_start, self._window_waited = now, waited
        elif self._window_bytes >= WINDOW_BYTES:
            elapsed = max(now - self._window_start, 1e-6)
            self._choose(self._window_bytes / elapsed, (waited - self._window_waited) / elapsed)
            self._window_start, self._window_waited, self._window_bytes = now, waited, 0
        self._window_bytes += nbytes

    def _choose(self, rate: float, waiting: float) -> None:
        """``waiting``: the share of the window the reader waited for the link."""
        self._rates[self._compressing] = rate
        self._windows += 1
        link_bound = waiting > LINK_BOUND_SHARE
        if self._compressing and link_bound and self.level < MAX_LEVEL:
            self.level += 1  # CPU to spare while the link is full: compress harder
            return
        if self._compressing and self.level > LEVEL:
            if waiting < CPU_BOUND_SHARE:
                self.level -= 1  # the CPU became the limit: compress faster
            return
        # Raw and not waiting for the link: compressing would only cost CPU.  Compressing and
        # still waiting for the link: raw would wait longer.  Otherwise the other way may be faster.
        if link_bound != self._compressing:
            other = self._rates.get(not self._compressing)
            if other is None or other > rate or self._windows >= PROBE_EVERY:
                self._compressing = not self._compressing
                self._windows = 0
