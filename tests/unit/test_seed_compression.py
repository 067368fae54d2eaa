"""Compressed seed streams: the same tree arrives, the MAC covers the data uncompressed, bombs are refused."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import tracemalloc

import zstandard
from twisted.trial.unittest import SynchronousTestCase

from orchagent.seed import compression, protocol
from orchagent.seed.compression import CompressionPolicy, zdata
from orchagent.seed.lanes import SharedStaging
from orchagent.seed.writer import INFLATED_BATCH_BYTES, INFLATED_BATCHES, TreeWriter
from orchagent.seed.protocol import ChecksumMismatch, Entry, EntryKind, Kind, ProtocolError, TransferFailed
from tests.support.seed_trees import SESSION, build_tree, describe_tree, tree_stream, writer_into
from tests.unit.test_seed_protocol import Recorder, decoder, split_frames


def kinds(stream: bytes) -> list[int]:
    return [frame[0] for frame in split_frames(stream)]


class CompressedStreamTests(SynchronousTestCase):
    """A zstd stream decodes to exactly what the raw stream does, and any change to it fails the seed."""

    @classmethod
    def setUpClass(cls):
        cls.base = tempfile.mkdtemp()
        cls.root = os.path.join(cls.base, "tree")
        build_tree(cls.root, big_bytes=300 * 1024, small_files=5)  # ibdata1 compresses, the small files do not
        cls.raw = tree_stream(cls.root)
        cls.compressed = tree_stream(cls.root, compression="zstd")
        cls.expected = Recorder()
        decoder(cls.expected).feed(cls.raw)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.base)

    def test_compressible_blocks_go_compressed_and_decode_to_the_same_calls(self):
        self.assertIn(Kind.ZDATA, kinds(self.compressed))
        self.assertNotIn(Kind.ZDATA, kinds(self.raw))
        self.assertLess(len(self.compressed), len(self.raw) // 2)
        recorder = Recorder()
        decoding = decoder(recorder)
        for at in range(0, len(self.compressed), 7777):  # frames cut anywhere
            decoding.feed(self.compressed[at:at + 7777])
        self.assertEqual(recorder.calls, self.expected.calls)
        self.assertEqual(len(self.compressed) + decoding.expanded, len(self.raw))

    def test_the_mac_is_the_same_for_both_streams(self):
        # The tags cover the data as written, not as sent: FILE_END and END frames are identical.
        tagged = (Kind.FILE_END, Kind.END)
        self.assertEqual([f for f in split_frames(self.raw) if f[0] in tagged],
                         [f for f in split_frames(self.compressed) if f[0] in tagged])

    def test_any_altered_compressed_byte_fails_the_seed(self):
        frames = split_frames(self.compressed)
        zdata = [i for i, frame in enumerate(frames) if frame[0] == Kind.ZDATA]
        self.assertTrue(zdata)
        for i in zdata:
            start = protocol.HEADER.size + protocol.ZDATA_HEADER.size
            for at in range(start, len(frames[i]), max(1, (len(frames[i]) - start) // 16)):
                altered = frames[i][:at] + bytes([frames[i][at] ^ 0x20]) + frames[i][at + 1:]
                stream = b"".join(frames[:i] + [altered] + frames[i + 1:])
                with self.subTest(frame=i, at=at):
                    recorder = Recorder()
                    with self.assertRaises(TransferFailed):
                        decoder(recorder).feed(stream)
                    self.assertEqual(recorder.calls.count(("file_end",)),
                                     self.expected.calls[:self._call_of(i)].count(("file_end",)))

    def _call_of(self, frame_index: int) -> int:
        """How many of the expected calls come before the file of ZDATA frame ``frame_index`` ends."""
        files_before = kinds(self.compressed)[:frame_index].count(Kind.FILE_END)
        ends = [n for n, call in enumerate(self.expected.calls) if call == ("file_end",)]
        return ends[files_before]

    def test_a_compressed_block_changed_to_other_valid_data_fails_its_file(self):
        frames = split_frames(self.compressed)
        i = kinds(self.compressed).index(Kind.ZDATA)
        offset, length = protocol.ZDATA_HEADER.unpack_from(frames[i], protocol.HEADER.size)
        other = protocol.zdata_frame(offset, length, zstandard.ZstdCompressor().compress(b"\0" * length))
        stream = b"".join(frames[:i] + [other] + frames[i + 1:])
        self.assertRaisesRegex(ChecksumMismatch, "'ibdata1' is not authentic", decoder(Recorder()).feed, stream)

    def test_the_restored_tree_is_identical(self):
        target = os.path.join(self.base, "target")
        os.mkdir(target)
        writer = writer_into(target)
        writer.start()
        writer.feed(self.compressed)
        writer.finish()
        self.assertEqual(describe_tree(target), describe_tree(self.root))
        self.assertEqual(writer.progress.wire_bytes, len(self.compressed))
        self.assertEqual(writer.progress.data_bytes, len(self.raw))


class InflatedMemoryTests(SynchronousTestCase):
    """Decompressed blocks wait for a slow disk instead of piling up in memory."""

    def setUp(self):
        base = self.mktemp()
        self.source, self.target = os.path.join(base, "source"), os.path.join(base, "target")
        os.makedirs(self.source)
        os.makedirs(self.target)
        with open(os.path.join(self.source, "zeros"), "wb") as f:
            for _ in range(48):
                f.write(bytes(1024 * 1024))
        self.stream = tree_stream(self.source, compression="zstd")
        self.assertLess(len(self.stream), 64 * 1024)  # 48 MB in one small chunk
        self.assertGreater(48 * 1024 * 1024, 2 * INFLATED_BATCHES * INFLATED_BATCH_BYTES)

    def inflated_while_the_disk_waits(self, writer: TreeWriter) -> int:
        """The bytes ``writer`` decompressed from the stream before waiting for a disk that does
        not write yet; then the disk goes on and the stream is fed whole."""
        writer.start()
        disk_may_go = threading.Event()
        self.addCleanup(disk_may_go.set)
        write_data, data = writer._write_data, writer.data
        written, inflated = [], []
        writer._write_data = lambda offset, piece: (disk_may_go.wait(), written.append(len(piece)),
                                                    write_data(offset, piece))
        writer.data = lambda offset, piece: (inflated.append(len(piece)), data(offset, piece))
        feeder = threading.Thread(target=writer.feed, args=(self.stream,), daemon=True)
        feeder.start()
        feeder.join(0.5)
        self.assertTrue(feeder.is_alive())  # waits for room instead of decompressing all 48 MB
        self.assertEqual(written, [])
        waited_at = sum(inflated)
        disk_may_go.set()
        feeder.join(10)
        return waited_at

    def test_a_small_chunk_of_compressed_zeros_waits_for_the_disk(self):
        writer = writer_into(self.target)
        inflated = self.inflated_while_the_disk_waits(writer)
        self.assertLessEqual(inflated, (INFLATED_BATCHES + 1) * INFLATED_BATCH_BYTES)
        writer.finish()
        self.assertEqual(describe_tree(self.target), describe_tree(self.source))

    def test_a_lane_of_a_seed_over_several_streams_holds_its_share(self):
        # the seed's decompressed data is split between its lanes, as its receive buffers are
        shared = SharedStaging(self.target, "9")
        shared.lanes = 4
        writer = TreeWriter(self.target, "9", mac=SESSION.stream_mac(), shared=shared)
        inflated = self.inflated_while_the_disk_waits(writer)
        self.assertLessEqual(inflated, (INFLATED_BATCHES + 1) * INFLATED_BATCH_BYTES // 4)
        writer.discard()


class CompressedBlockMemoryTests(SynchronousTestCase):
    """A compressed block holds the memory its frame's length says: what the sender's pipe counts."""

    def test_a_compressed_block_holds_its_size_not_the_input_size(self):
        block = os.urandom(300 * 1024) + bytes(724 * 1024)  # 1 MB compressing to about 300 KB
        zdata(0, block, 0.0)  # this thread's zstd context is made
        if not tracemalloc.is_tracing():
            tracemalloc.start()
            self.addCleanup(tracemalloc.stop)
        before = tracemalloc.get_traced_memory()[0]
        frame = zdata(0, block, 0.0)
        held = tracemalloc.get_traced_memory()[0] - before
        size = sum(map(len, frame))
        self.assertLess(size, len(block) // 2)
        self.assertLess(held, size + 4096)  # zstandard's own result holds the whole 1 MB


class IncompressibleDataTests(SynchronousTestCase):
    """Blocks that do not shrink go raw, in every mode."""

    def test_random_data_goes_raw(self):
        base = self.mktemp()
        os.makedirs(base)
        with open(os.path.join(base, "random"), "wb") as f:
            f.write(os.urandom(3 * 65536 + 5))
        raw = tree_stream(base)
        for mode in compression.MODES:
            with self.subTest(mode=mode):
                stream = tree_stream(base, compression=mode)
                self.assertNotIn(Kind.ZDATA, kinds(stream))
                self.assertEqual(len(stream), len(raw))

    def test_auto_sends_a_block_raw_unless_it_saves_enough(self):
        half_random = os.urandom(60000) + b"\0" * 2000  # saves about 3%: not worth it
        self.assertIsNone(zdata(0, half_random, CompressionPolicy("auto").min_saving))
        self.assertIsNotNone(zdata(0, half_random, CompressionPolicy("zstd").min_saving))
        self.assertFalse(CompressionPolicy("none").compressing(65536))


class DecompressionBombTests(SynchronousTestCase):
    """A small frame claiming (or holding) a huge block is refused before anything is allocated."""

    def setUp(self):
        self.decoding = decoder(Recorder())
        big = Entry(EntryKind.FILE, b"big", 0o600, 0, size=2 ** 40)
        self.decoding.feed(protocol.frame(Kind.ENTRY, big.encode()))

    def test_a_block_larger_than_the_maximum_is_refused(self):
        length = protocol.MAX_BLOCK_BYTES + 1
        bomb = protocol.zdata_frame(0, length, zstandard.ZstdCompressor().compress(b"\0" * length))
        self.assertRaisesRegex(ProtocolError, "at most", self.decoding.feed, bomb)

    def test_a_block_holding_more_than_it_declares_is_refused(self):
        bomb = protocol.zdata_frame(0, 1000, zstandard.ZstdCompressor().compress(b"\0" * protocol.MAX_BLOCK_BYTES))
        self.assertRaisesRegex(ProtocolError, "is corrupt", self.decoding.feed, bomb)

    def test_a_block_without_its_size_is_refused(self):
        compressed = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * 1000)
        self.assertRaisesRegex(ProtocolError, "is corrupt", self.decoding.feed,
                               protocol.zdata_frame(0, 1000, compressed))

    def test_an_oversized_compressed_frame_is_refused(self):
        header = protocol.HEADER.pack(Kind.ZDATA, protocol.MAX_ZDATA_PAYLOAD + 1)
        self.assertRaisesRegex(ProtocolError, "bad frame length", self.decoding.feed, header + b"\0" * 64)


class AutoPolicyTests(SynchronousTestCase):
    """``auto`` compresses while the link is the limit and that moves data faster, else sends raw."""

    def choices(self, seconds: dict[bool, float], waiting: dict[bool, float], windows: int = 40,
                ratio: float = 3) -> list[bool]:
        """How each window went, given the time a whole window takes each way and the share of it the
        reader waited for the link, with blocks that compress ``ratio`` times."""
        now, waited = [0.0], [0.0]
        policy = CompressionPolicy("auto", waited=lambda: waited[0], clock=lambda: now[0])
        block = 1024 * 1024
        chosen = []
        for window in range(windows):
            compressing = policy.compressing(block)
            chosen.append(compressing)
            size = compression.WINDOW_BYTES if window else compression.FIRST_WINDOW_BYTES
            for _ in range(size // block - 1):
                policy.sent(int(block / ratio) if compressing else block)
                self.assertEqual(policy.compressing(block), compressing)
            policy.sent(int(block / ratio) if compressing else block)
            timed = size - (0 if window else compression.PIPE_FILL_BYTES)  # the first fills the empty pipe at once
            now[0] += seconds[compressing] * timed / compression.WINDOW_BYTES
            waited[0] += seconds[compressing] * timed / compression.WINDOW_BYTES * waiting[compressing]
        return chosen

    def test_a_slow_link_gets_compression(self):
        chosen = self.choices({True: 0.1, False: 0.3}, {True: 0.5, False: 0.9})
        self.assertEqual(chosen[:3], [False, True, True])  # starts raw, finds the link to be the limit
        self.assertEqual(set(chosen[1:]), {True})  # while compressing still waits for the link, raw cannot be faster

    def test_a_link_faster_than_the_disk_gets_raw_blocks(self):
        chosen = self.choices({True: 0.3, False: 0.1}, {True: 0.0, False: 0.0})
        self.assertEqual(set(chosen), {False})  # never a compressed block: nothing to gain

    def test_compression_slower_than_the_link_is_tried_only_now_and_then(self):
        chosen = self.choices({True: 0.3, False: 0.1}, {True: 0.0, False: 0.5})
        self.assertLessEqual(chosen.count(True), len(chosen) // compression.PROBE_EVERY + 2)
        self.assertIn(True, chosen)

    def test_compression_that_pays_is_kept_when_the_cpu_becomes_the_limit(self):
        chosen = self.choices({True: 0.1, False: 0.3}, {True: 0.0, False: 0.9})
        self.assertEqual(set(chosen[1:]), {True})  # raw was the link's rate: no use trying it again

    def test_raw_comes_back_when_something_behind_the_link_is_the_limit(self):
        # Both ways wait for the socket, raw moves more data: the receiver (sharing the CPU) is the limit.
        chosen = self.choices({True: 0.3, False: 0.1}, {True: 0.5, False: 0.5})
        self.assertEqual(chosen[:3], [False, True, False])
        self.assertLessEqual(chosen.count(True), len(chosen) // compression.PROBE_EVERY + 1)
        self.assertIn(True, chosen[3:])  # compression is tried again now and then, one window each time
        self.assertNotIn((True, True), list(zip(chosen, chosen[1:])))

    def test_data_compressed_to_almost_nothing_stays_compressed(self):
        # Zeros do not fill the pipe, so the reader does not wait: that is not the CPU being the limit.
        chosen = self.choices({True: 0.05, False: 0.3}, {True: 0.0, False: 0.9}, ratio=1000)
        self.assertEqual(set(chosen[1:]), {True})

    def test_a_way_about_as_fast_is_tried_again_soon(self):
        # Compressing is 10% slower than the link here: one window's noise on a busy host could say so.
        chosen = self.choices({True: 0.11, False: 0.1}, {True: 0.0, False: 0.5})
        settled = chosen[10:]  # after the first windows (whose rate is the pipe's filling)
        self.assertGreaterEqual(settled.count(True), len(settled) // (compression.PROBE_SOON + 1) - 1)

    def test_data_that_does_not_compress_goes_raw_although_the_link_is_the_limit(self):
        chosen = self.choices({True: 0.1, False: 0.1}, {True: 0.5, False: 0.5}, ratio=1)
        self.assertEqual(chosen[:3], [False, True, False])
        self.assertLessEqual(chosen.count(True), 4)  # tried again after 8, 16 windows

    def test_a_way_confirmed_slower_is_tried_ever_more_rarely(self):
        chosen = self.choices({True: 0.3, False: 0.1}, {True: 0.0, False: 0.5}, windows=120)
        tries = [n for n, (a, b) in enumerate(zip(chosen, chosen[1:]), 1) if b and not a]
        gaps = [b - a for a, b in zip(tries, tries[1:])]
        self.assertEqual(gaps, sorted(gaps))  # 8, 16, 32, 64 windows between the tries
        self.assertGreater(gaps[-1], 2 * gaps[0])
