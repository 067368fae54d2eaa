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

# In a fresh process: how many thread arenas glibc made once six threads each allocated.
ARENA_PROBE = textwrap.dedent("""
    import sys
    import threading
    from orchagent import allocator
    from testbed.agent import malloc_thread_arenas

    if sys.argv[1] == "tuned":
        allocator.tune_for_large_buffers()
    threads_ready = threading.Barrier(6)
    held = []

    def allocate():
        held.append(bytearray(200_000))  # from malloc, not Python's small-object allocator
        threads_ready.wait()

    threads = [threading.Thread(target=allocate) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(malloc_thread_arenas())
""")


# In a fresh process: a seed's shape, four times over with new threads each time, as an agent
# serves seed after seed: a reader thread hands MB blocks to a pool of two threads that make new
# ones from them, the main thread frees those, at most 8 queued.  Prints how far each seed's peak
# (VmHWM) rose above the process's size before the first.
SEEDS_PROBE = textwrap.dedent("""
    import queue
    import sys
    import threading
    from concurrent.futures import ThreadPoolExecutor
    from orchagent import allocator

    if sys.argv[1] == "tuned":
        allocator.tune_for_large_buffers()

    def peak_mb():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) // 1024 for line in status if line.startswith("VmHWM"))

    def seed():
        blocks = queue.Queue(8)

        def read():
            with ThreadPoolExecutor(2) as pool:
                for i in range(300):
                    block = b"x" * (1024 * 1024 - 100 * (i % 7))
                    blocks.put(pool.submit(lambda data: data[:-10] + b"y" * 5, block))
            blocks.put(None)

        reader = threading.Thread(target=read)
        reader.start()
        while (block := blocks.get()) is not None:
            block.result()
        reader.join()
        return peak_mb()

    before = peak_mb()
    print(*(seed() - before for _ in range(4)))
""")


def _fresh_python(program: str, *args: str) -> str:
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(allocator.__file__)))
    return subprocess.run([sys.executable, "-c", program, *args], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": package_root}).stdout


class AllocatorTests(SynchronousTestCase):
    """Once tuned, a seed's chunk buffers come from the heap, not from fresh mmaps that cost page faults."""

    def test_mb_sized_buffers_come_from_the_heap_once_tuned(self):
        untuned, tuned, after = _fresh_python(PROBE).split()
        self.assertEqual((untuned, tuned, after), ("1", "True", "0"))

    def test_threads_share_at_most_the_capped_arenas_once_tuned(self):
        # A seed's compressing threads would each get an arena of their own, each keeping its own
        # high-water mark; capped, the main arena and one more serve every thread.
        self.assertGreater(int(_fresh_python(ARENA_PROBE, "untuned")), allocator.ARENAS - 1)
        self.assertLessEqual(int(_fresh_python(ARENA_PROBE, "tuned")), allocator.ARENAS - 1)

    def test_later_seeds_reuse_what_earlier_ones_freed(self):
        # A seed's blocks in flight: 8 queued, 2 being made, 1 being read, 1 being freed, each
        # with its copy: some 16 MB.  With an arena per thread (glibc's default: 27 to 34 MB here),
        # or two (28 on the first seed, 32 on the fourth), what one thread freed stayed in its
        # arena while another thread's arena grew.
        untuned = [int(mb) for mb in _fresh_python(SEEDS_PROBE, "untuned").split()]
        tuned = [int(mb) for mb in _fresh_python(SEEDS_PROBE, "tuned").split()]
        # (Tuned, 15 to 18 MB, also with eight probes at once on two cores.)
        self.assertGreater(max(untuned), 25)  # the probe shows the growth it guards against
        self.assertLessEqual(max(tuned), 22)
        self.assertLessEqual(tuned[-1] - tuned[0], 3)

    def test_the_buffers_a_seed_allocates_per_chunk_are_below_the_threshold(self):
        # file reads, TLS records read out for the socket, and what Twisted joins before a send
        per_chunk = (reader.CHUNK_BYTES, tlschannel.RECORDS_BYTES, 2 * transfer.SOCKET_BUFFER_BYTES)
        self.assertLessEqual(max(per_chunk), allocator.MMAP_THRESHOLD_BYTES)
        self.assertGreater(allocator.TRIM_THRESHOLD_BYTES, allocator.MMAP_THRESHOLD_BYTES)
