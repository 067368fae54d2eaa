"""Tunes the C allocator for an agent that moves data in MB-sized buffers.

glibc serves a request above its mmap threshold with a fresh ``mmap`` and returns it with
``munmap`` when freed; the threshold starts at 128 KiB and adapts only to sizes freed before,
and the heap is trimmed back as soon as 2x that threshold is free at its top.  A seed's
buffers are a few hundred KB to a few MB and vary in size (reads, frames, TLS records joined by
Twisted's transports), so with the defaults many of them come as new mappings whose every page
faults and is zeroed on first touch: over TLS that was a quarter of the sender's CPU
(``bench/RESULTS.md``).  Fixed thresholds keep such buffers in the heap, where freed memory is
reused at once.  The cost is memory that stays mapped after a seed: at most the trim threshold
per allocator arena, and the agent's peak memory stays what it was.

All threads share one allocator arena.  glibc gives each thread that allocates under contention
an arena of its own (up to 8 per core), and each arena keeps its own free memory, up to the trim
threshold: a seed's compressing threads allocate the blocks its sending thread frees, so every seed
left a few arenas fuller.  Capped at two (the main one and one for every other thread), which of
the two a seed's threads got changed from seed to seed: an agent's second and third seeds grew a
heap of ~20 MB in the one arena while the ~20 MB the first seed had freed stayed in the other, and
the target peaked at 106 to 125 MB against 91 on its first seed (``bench/RESULTS.md``, "Peak RSS
on an agent's later seeds").  With one arena every seed reuses what the one before freed.  The
lock it costs is hardly contended: the threads allocate their MB blocks as Python objects, holding
the GIL, which already lets one at a time.
"""

from __future__ import annotations

import ctypes

MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024  # requests up to this size come from the heap
TRIM_THRESHOLD_BYTES = 32 * 1024 * 1024  # free memory kept at the top of a heap before returning it
_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
ARENAS = 1  # the main arena, for every thread


def tune_for_large_buffers() -> bool:
    """Set fixed mmap and trim thresholds and cap the arenas; False where the C library has no
    ``mallopt`` (not glibc).  Before the agent starts threads: arenas made before stay."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
                and mallopt(_M_ARENA_MAX, ARENAS))
