"""zstd for the seed stream's file data (``SeedCompression``): which blocks go compressed, and how.

``none`` sends every block raw; ``zstd`` compresses every block with zstd -1 and sends it so
whenever that is smaller; ``auto`` (the default) measures instead of guessing.  It starts raw
and times windows of data, each ending in a choice for the next one:

* raw, and the reader waited for the link (the pipe to the socket was full): the link is the
  limit, so compress, unless compressing was timed slower (then it is tried again later);
* raw, and it did not wait: the disk or the CPU is the limit; compressing would only cost CPU;
* compressed: stay, unless raw was timed faster (the CPU became the limit, or what waits is
  behind the link: the receiver, sharing the CPU of a test bed on a link faster than the disk);
* compressed, and it saved nothing (random data): raw at once;
* compressed 8x or more (InnoDB's empty redo log): it cannot have filled the pipe, so not
  waiting says nothing.

Compressing, when it was timed slower, is tried again after :data:`PROBE_EVERY` windows, twice
as many each time it is still slower, and soon when the two were close.  A way's rate is the
mean of its last two windows, without what went into an empty pipe: on a busy host one window
can mislead.  In ``auto`` a block that does not shrink by :data:`AUTO_MIN_SAVING` goes raw.
Why: ``bench/RESULTS.md``.

:class:`CompressionPolicy` decides in the reader thread, block by block in stream order;
:func:`zdata` compresses in any thread (the reader's, or the compressing threads of
:mod:`orchagent.seed.ordered`), each with a zstd context of its own.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import zstandard

from orchagent.seed.protocol import MAX_BLOCK_BYTES, ZDATA_HEADER, zdata_header

MODES = ("auto", "zstd", "none")
LEVEL = 1  # zstd -1: on InnoDB pages the best ratio of levels 1 to 15, and the fastest (bench/RESULTS.md)
AUTO_MIN_SAVING = 0.05  # auto: a block must shrink by this fraction to be worth decompressing
WINDOW_BYTES = 32 * 1024 * 1024  # auto: data timed per decision (several times the sender's pipe)
FIRST_WINDOW_BYTES = 16 * 1024 * 1024  # auto: the first (raw) one: enough to fill the pipe and wait
PROBE_EVERY = 8  # auto: windows the slower way is not tried again (unless it was never tried) ...
MAX_PROBE_EVERY = 64  # ... doubled up to this each time the try confirms it slower
PROBE_SOON = 2  # auto: the same when it was within CLOSE of the faster one (one window's noise, on a busy host)
CLOSE = 1.25  # auto: rates this near each other may differ by noise alone
LINK_BOUND_SHARE = 0.2  # auto: the link is the limit when the reader waited this share of a window
PIPE_FILL_BYTES = 12 * 1024 * 1024  # auto: what an empty pipe and socket take without waiting (8 MB + buffers)
MIN_TELLING_WIRE = WINDOW_BYTES // 8  # auto: a compressed window that did not wait says nothing below this

_contexts = threading.local()  # a zstd compression context per thread: one may not be shared


class CompressionPolicy:
    """Says which blocks of file data go to zstd; the reader thread asks once per block, in order.

    ``waited``: the seconds the reader has waited so far for room towards the link (``auto``).
    """

    def __init__(self, mode: str, waited: Callable[[], float] = lambda: 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown compression {mode!r}, expected one of {', '.join(MODES)}")
        self._mode = mode
        self.min_saving = AUTO_MIN_SAVING if mode == "auto" else 0.0  # for zdata()
        self._waited = waited
        self._clock = clock
        self._compressing = mode == "zstd"
        self._rates: dict[bool, float] = {}  # auto: data bytes per second of the last window each way
        self._window_start: float | None = None
        self._window_waited = 0.0
        self._window_bytes = 0
        self._window_wire = 0  # auto: bytes of the stream sent (compressed or not) in this window
        self._filling = True  # auto: the window began with the pipe empty (the first, or after one that did not wait)
        self._windows = 0  # auto: windows since the last change of way
        self._patience = PROBE_EVERY  # auto: windows before the slower way is tried again
        self._probing = False  # auto: the current way is being tried again for a window

    def compressing(self, nbytes: int) -> bool:
        """Whether the next block, of ``nbytes``, is to be compressed (then see :func:`zdata`)."""
        if self._mode == "auto":
            self._measure(nbytes)
        return self._compressing and nbytes <= MAX_BLOCK_BYTES

    def sent(self, nbytes: int) -> None:
        """``nbytes`` of the stream, as sent, are on their way to the link (``auto`` counts them)."""
        self._window_wire += nbytes

    def _measure(self, nbytes: int) -> None:
        """auto: once a window's blocks are all through, choose how to send the next one."""
        now, waited = self._clock(), self._waited()
        if self._window_start is None:
            self._window_start, self._window_waited = now, waited
        elif self._window_bytes >= (WINDOW_BYTES if self._rates else FIRST_WINDOW_BYTES):
            elapsed = max(now - self._window_start, 1e-6)
            link_bound = waited - self._window_waited > LINK_BOUND_SHARE * elapsed
            # What went into an empty pipe did not wait for anything: not counted in the rate.
            timed = self._window_bytes - (PIPE_FILL_BYTES if self._filling else 0)
            # Compressed 8x or more (InnoDB's empty redo log), it could not fill the pipe: no wait says nothing.
            if link_bound or not self._compressing or self._window_wire >= MIN_TELLING_WIRE:
                saved = self._window_wire < self._window_bytes * (1 - AUTO_MIN_SAVING)
                self._choose(timed / elapsed, link_bound, saved)
            self._window_start, self._window_waited, self._window_bytes, self._window_wire = now, waited, 0, 0
            self._filling = not link_bound
        self._window_bytes += nbytes

    def _choose(self, rate: float, link_bound: bool, saved: bool) -> None:
        last = self._rates.get(self._compressing)
        rate = self._rates[self._compressing] = rate if last is None else (last + rate) / 2  # less noise
        self._windows += 1
        other = self._rates.get(not self._compressing)
        faster = True  # whether a switch is to the faster way (else it tries the slower one again)
        if self._compressing and not saved:  # the data does not compress (random, or compressed already)
            switch, self._rates[True] = True, 0.0  # tried again only when due
        elif self._compressing:
            # Raw was timed waiting for the link (else this would not compress): it is not faster
            # now unless compressing became slower (the CPU is busy), or something waits behind the
            # link (the receiver's CPU on a link faster than the disk).  No need to try it again.
            switch = other is not None and other > rate
        elif link_bound:  # raw and the link is the limit
            faster = other is None or other > rate
            due = self._windows >= (PROBE_SOON if other is not None and other * CLOSE > rate else self._patience)
            switch = faster or due
        else:  # raw and not waiting for the link: compressing would only cost CPU
            switch = False
        if self._probing:  # a way tried again: slower still (back), or now the better one
            self._patience = min(2 * self._patience, MAX_PROBE_EVERY) if switch else PROBE_EVERY
        self._probing = switch and not faster
        if switch:
            self._compressing = not self._compressing
            self._windows = 0


def zdata(offset: int, data: bytes, min_saving: float) -> list[bytes] | None:
    """The ZDATA frame for ``data`` at ``offset`` (its header and the compressed bytes, not joined:
    fewer large allocations in the compressing threads), or None to send it raw (as a DATA frame):
    it does not shrink by ``min_saving`` (a fraction), or not by the ZDATA header's size."""
    try:
        context = _contexts.zstd
    except AttributeError:
        context = _contexts.zstd = zstandard.ZstdCompressor(level=LEVEL)
    compressed = context.compress(data)
    if len(compressed) >= min(len(data) * (1 - min_saving), len(data) - ZDATA_HEADER.size):
        return None
    return [zdata_header(offset, len(data), len(compressed)), _right_sized(compressed)]


def _right_sized(compressed: bytes) -> bytes:
    """``compressed`` in a bytes object of its own size.  zstandard's ``compress`` allocates the
    worst case (the input's size and more) and only shortens the object's length, never its
    memory: a 1 MB block compressed to 400 KB holds 1 MB until it is sent, while the sender's pipe
    counts it as 400 KB.  That put 2.5x (8x on an empty redo log) the pipe's bytes in memory,
    what took the source above 100 MB with 4 streams (bench/RESULTS.md, "The source's memory with
    parallel streams").  The copy costs a memcpy of the compressed bytes; the large buffer is
    freed at once and reused by the next block."""
    return bytes(memoryview(compressed))
