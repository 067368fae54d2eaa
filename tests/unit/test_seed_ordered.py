"""Compression on several threads: the stream keeps its order and its MAC, errors stop it, no thread outlives it."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import threading
import time

from twisted.trial.unittest import SynchronousTestCase

from orchagent.seed import reader
from orchagent.seed.ordered import THREAD_NAME, OrderedPool
from orchagent.seed.protocol import Kind
from tests.support.seed_trees import tree_stream
from tests.unit.test_seed_compression import kinds
from tests.unit.test_seed_protocol import Recorder, decoder


def pool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME)]


def slow_square(n: int) -> int:
    time.sleep(random.random() / 500)  # the jobs finish out of order
    return n * n


class OrderedPoolTests(SynchronousTestCase):
    """Results come out in the order the jobs went in, at most ``ahead`` jobs at a time."""

    def setUp(self):
        self.pool = OrderedPool(workers=3, ahead=4)
        self.addCleanup(self.pool.close)

    def test_results_keep_the_order_of_the_items(self):
        items = (self.pool.submit(slow_square, n) if n % 3 else n for n in range(200))
        self.assertEqual(list(self.pool.in_order(items)), [n * n if n % 3 else n for n in range(200)])
        self.assertEqual(pool_threads(), [])  # the stream ended: so did the threads

    def test_no_more_than_ahead_jobs_are_in_flight(self):
        release = threading.Event()
        self.addCleanup(release.set)
        drawn = []

        def items():
            for n in range(20):
                drawn.append(n)
                yield self.pool.submit(lambda n=n: (release.wait(10), n)[1])

        results = []
        consumer = threading.Thread(target=lambda: results.extend(self.pool.in_order(items())))
        consumer.start()
        consumer.join(0.3)
        self.assertEqual(len(drawn), 5)  # ahead + the one whose result it waits for
        release.set()
        consumer.join(10)
        self.assertEqual(results, list(range(20)))

    def test_an_error_in_a_job_stops_the_stream_at_its_place(self):
        def job(n):
            if n == 7:
                raise ValueError("block 7 failed")
            return n

        got = []
        with self.assertRaisesRegex(ValueError, "block 7 failed"):
            for result in self.pool.in_order(self.pool.submit(job, n) for n in range(100)):
                got.append(result)
        self.assertEqual(got, list(range(7)))
        self.assertEqual(pool_threads(), [])

    def test_closing_the_stream_early_drops_queued_jobs_and_leaves_no_thread(self):
        ran = []
        first, rest = threading.Event(), threading.Event()
        self.addCleanup(rest.set)

        def job(n):
            (rest if n else first).wait(10)
            ran.append(n)
            return n

        pool = OrderedPool(workers=2, ahead=3)
        stream = pool.in_order(pool.submit(job, n) for n in range(50))
        threading.Timer(0.2, first.set).start()
        self.assertEqual(next(stream), 0)  # by then jobs 1 and 2 run, job 3 waits for a thread
        self.assertEqual(len(pool_threads()), 2)
        threading.Timer(0.1, rest.set).start()
        stream.close()  # as the sender does when the transfer is aborted
        self.assertEqual(pool_threads(), [])
        self.assertEqual(sorted(ran), [0, 1, 2])  # the running ones finished, the queued one never started


class ParallelTreeStreamTests(SynchronousTestCase):
    """A tree compressed on several threads gives the same stream as one thread, and decodes."""

    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp()
        rng = random.Random(5)
        with open(os.path.join(cls.root, "ibdata1"), "wb") as f:
            for block in range(48):  # each 64 KiB block of its own, half of them incompressible
                f.write(rng.randbytes(65536) if block % 2 else ((b"block %d " % block) * 8192)[:65536])

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root)

    def test_the_stream_is_the_one_thread_stream_and_decodes_to_the_data(self):
        parallel = tree_stream(self.root, compression="zstd")
        self.patch(reader, "COMPRESSING_THREADS", 1)
        self.patch(reader, "BLOCKS_AHEAD", 0)
        self.assertEqual(parallel, tree_stream(self.root, compression="zstd"))
        self.assertEqual(kinds(parallel).count(Kind.ZDATA), 24)  # the compressible ones, the others raw
        self.assertEqual(kinds(parallel).count(Kind.DATA), 24)
        recorder = Recorder()
        decoder(recorder).feed(parallel)  # every tag checks: the MAC saw the frames in this order
        with open(os.path.join(self.root, "ibdata1"), "rb") as f:
            self.assertEqual([call for call in recorder.calls if call[0] == "data"], [("data", 0, f.read())])

    def test_an_error_while_compressing_fails_the_stream_and_leaves_no_thread(self):
        def broken(offset, data, min_saving):
            if offset >= 10 * 65536:
                raise MemoryError("zstd could not allocate")
            return None

        self.patch(reader, "zdata", broken)
        with self.assertRaisesRegex(MemoryError, "zstd could not allocate"):
            tree_stream(self.root, compression="zstd")
        self.assertEqual(pool_threads(), [])
