"""The allocator tuning, in a fresh Python process: MB-sized buffers come from the heap, not fresh mappings."""

import os
import subprocess
import sys
import textwrap

from twisted.trial.unittest import SynchronousTestCase

from orchagent import allocator
from orchagent.seed import reader, tlschannel, transfer

# In a fresh process (the thresholds are process-wide and adapt to what was freed before):
# how many new anonymous mappings of at least 3 MB one 3 MB buffer brings, before and after.
PROBE = textwrap.dedent("""
    from orchagent import allocator

    def big_mappings():
        count = 0
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split()
                start, end = (int(x, 16) for x in fields[0].split("-"))
                if len(fields) == 5 and end - start >= 3 * 1024 * 1024:
                    count += 1
        return count

    def mappings_for_one_buffer():
        before = big_mappings()
        buffer = bytearray(3 * 1024 * 1024)
        return big_mappings() - before

    untuned = mappings_for_one_buffer()
    tuned = allocator.tune_for_large_buffers()
    print(untuned, tuned, mappings_for_one_buffer())
""")


class AllocatorTests(SynchronousTestCase):
    """Once tuned, a seed's chunk buffers come from the heap, not from fresh mmaps that cost page faults."""

    def test_mb_sized_buffers_come_from_the_heap_once_tuned(self):
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(allocator.__file__)))
        out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONPATH": package_root}).stdout
        untuned, tuned, after = out.split()
        self.assertEqual((untuned, tuned, after), ("1", "True", "0"))

    def test_the_buffers_a_seed_allocates_per_chunk_are_below_the_threshold(self):
        # file reads, TLS records read out for the socket, and what Twisted joins before a send
        per_chunk = (reader.CHUNK_BYTES, tlschannel.RECORDS_BYTES, 2 * transfer.SOCKET_BUFFER_BYTES)
        self.assertLessEqual(max(per_chunk), allocator.MMAP_THRESHOLD_BYTES)
        self.assertGreater(allocator.TRIM_THRESHOLD_BYTES, allocator.MMAP_THRESHOLD_BYTES)
