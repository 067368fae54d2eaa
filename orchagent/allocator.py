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

The arenas are capped at two.  glibc gives each thread that allocates under contention an arena
of its own, and an arena keeps its own high-water mark: a seed's compressing threads allocate the
blocks its sending thread frees, so every seed left a few arenas fuller and an agent's second
compressed seed peaked some 15 MB above its first (``bench/RESULTS.md``, "Compression on every core").
"""

from __future__ import annotations

import ctypes

MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024  # requests up to this size come from the heap
TRIM_THRESHOLD_BYTES = 32 * 1024 * 1024  # free memory kept at the top of a heap before returning it
_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
ARENAS = 2  # the main arena and one for every other thread


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
