"""Large files' ranges spread over a seed's lanes: on the wire, and put together by the receiver.

The lanes' streams are made by real readers and fed to real writers sharing one staging directory,
in this process, without a network (the lanes' connections: tests/integration/test_seed_lanes.py).
"""

import ctypes
import errno
import os
import threading

from twisted.trial.unittest import SynchronousTestCase

from orchagent.seed import protocol, ranges
from orchagent.seed.decoder import StreamDecoder
from orchagent.seed.lanes import Plan, SharedStaging
from orchagent.seed.protocol import Entry, EntryKind, Kind, ProtocolError, TransferFailed
from orchagent.seed.ranges import punch
from orchagent.seed.reader import TreeReader
from orchagent.seed.resumption import START
from orchagent.seed.writer import TreeWriter
from tests.support.seed_trees import SESSION, build_tree, describe_tree

MB = 1024 * 1024
LANES = 3


class _Ignore:
    """A StreamHandler that checks nothing: the decoder's own checks are under test."""

    def __getattr__(self, name):
        return lambda *args: None


class RangesOnTheWireTests(SynchronousTestCase):
    def test_a_range_round_trips_and_one_outside_its_file_is_refused(self):
        entry = Entry(EntryKind.FILE, b"db/t.ibd", 0o640, 7, size=20 * MB, part=(8 * MB, 8 * MB))
        self.assertEqual(protocol.parse_entry(entry.encode()), entry)
        self.assertEqual((entry.start, entry.end, entry.length, entry.counted_files), (8 * MB, 16 * MB, 8 * MB, 0))
        for part in ((16 * MB, 8 * MB), (0, 0), (20 * MB, 1)):
            with self.subTest(part=part):
                payload = Entry(EntryKind.FILE, b"db/t.ibd", 0o640, 7, size=20 * MB, part=part).encode()
                self.assertRaisesRegex(ProtocolError, r"outside 'db/t.ibd' \(20971520 bytes\)",
                                       protocol.parse_entry, payload)
        directory = Entry(EntryKind.DIR, b"db", 0o755, 7).encode()
        self.assertRaisesRegex(ProtocolError, "malformed entry", protocol.parse_entry, directory + bytes(16))

    def test_data_outside_the_announced_range_is_a_protocol_error(self):
        entry = Entry(EntryKind.FILE, b"t.ibd", 0o640, 7, size=20 * MB, part=(8 * MB, 8 * MB))
        start = protocol.frame(Kind.ENTRY, entry.encode())
        for offset, length in ((8 * MB - 1, 2), (16 * MB - 1, 2), (20 * MB, 1)):
            with self.subTest(offset=offset):
                frame = protocol.data_header(offset, length) + bytes(length)
                with self.assertRaisesRegex(ProtocolError, "out of order|beyond the range of"):
                    StreamDecoder(_Ignore(), SESSION.stream_mac()).feed(start + frame)
        inside = protocol.data_header(8 * MB, 4) + bytes(4)
        StreamDecoder(_Ignore(), SESSION.stream_mac()).feed(start + inside)  # no error


class PunchTests(SynchronousTestCase):
    """A range's unverified bytes are thrown away, the rest of the file (other lanes') kept."""

    def _punched(self) -> bytes:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"a" * 3 * MB)
        fd = os.open(path, os.O_RDWR)
        try:
            punch(fd, MB + 5, MB)
            punch(fd, 0, 0)
        finally:
            os.close(fd)
        with open(path, "rb") as f:
            return f.read()

    def test_a_hole_is_punched_and_the_size_kept(self):
        self.assertEqual(self._punched(), b"a" * (MB + 5) + bytes(MB) + b"a" * (MB - 5))

    def test_where_holes_cannot_be_punched_zeros_are_written(self):
        class NoHoles:
            def fallocate(self, *args):
                ctypes.set_errno(errno.EOPNOTSUPP)
                return -1

        self.patch(ranges, "_libc", NoHoles())
        self.assertEqual(self._punched(), b"a" * (MB + 5) + bytes(MB) + b"a" * (MB - 5))


class RangedFilesLimitTests(SynchronousTestCase):
    """No sender makes the receiver hold a descriptor per file by cutting more files than a seed cuts."""

    def test_more_ranged_files_than_a_seed_cuts_are_refused_before_any_is_made(self):
        made = []

        def create(parent):
            made.append(parent)
            return b"partial", os.open(os.devnull, os.O_WRONLY)

        files = ranges.RangedFiles()
        self.addCleanup(files.close)
        for n in range(ranges.MAX_RANGED_FILES):
            os.close(files.open(Entry(EntryKind.FILE, b"t%d" % n, 0o640, 7, size=16 * MB, part=(0, 8 * MB)), 0, create))
        with self.assertRaisesRegex(ProtocolError, "more than 64 files sent in ranges"):
            files.open(Entry(EntryKind.FILE, b"one-more", 0o640, 7, size=16 * MB, part=(0, 8 * MB)), 0, create)
        self.assertEqual(len(made), ranges.MAX_RANGED_FILES)


class RangedReceiveTests(SynchronousTestCase):
    """Three lanes' writers put a tree with large files together; only a whole one is moved in."""

    def setUp(self):
        self.source, self.target = self.mktemp(), self.mktemp()
        build_tree(self.source, big_bytes=20 * MB + 5, small_files=20)  # ibdata1 and sparse.ibd go in ranges
        os.makedirs(self.target)
        self.plan = Plan(self.source, LANES)
        self.shared = SharedStaging(self.target, "9")
        self.shared.lanes = LANES
        self.writers = [TreeWriter(self.target, "9", mac=SESSION.stream_mac(), shared=self.shared)
                        for _ in range(LANES)]
        for writer in self.writers:
            writer.start()
            self.addCleanup(writer.discard)

    def _stream(self, lane: int, resume=START) -> bytes:
        reader = TreeReader(self.source, SESSION.stream_mac(), chunk_bytes=256 * 1024, resume=resume,
                            carries=self.plan.carries(lane), lanes=LANES)
        return b"".join(part for batch in reader.batches() for part in batch.parts)

    def _finish_all(self, writers) -> list[str]:
        """Each writer's finish() in a thread of its own (the last moves the tree in): how each ended."""
        outcomes = [""] * len(writers)

        def finish(i):
            try:
                writers[i].finish()
                outcomes[i] = "ok"
            except TransferFailed as e:
                outcomes[i] = str(e)

        threads = [threading.Thread(target=finish, args=(i,)) for i in range(len(writers))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        return outcomes

    def test_three_lanes_put_the_large_files_together(self):
        self.assertGreater(sum(bool(self.plan.carries(lane)(b"ibdata1")) for lane in range(LANES)), 1)
        for lane, writer in enumerate(self.writers):
            writer.feed(self._stream(lane))
        self.assertEqual(self._finish_all(self.writers), ["ok"] * LANES)
        self.assertEqual(describe_tree(self.target), describe_tree(self.source))
        blocks = [os.stat(os.path.join(root, "sparse.ibd")).st_blocks for root in (self.source, self.target)]
        self.assertEqual(blocks[1], blocks[0])  # holes stay holes, also in ranges

    def test_a_lane_cut_inside_a_range_resumes_from_its_checkpoint(self):
        streams = [self._stream(lane) for lane in range(LANES)]
        cut = next(lane for lane in range(LANES) if self.plan.carries(lane)(b"ibdata1")[0][0] == 0)
        stream = streams[cut]
        at = stream.index(b"ibdata1") + 5 * MB + 12345  # past two checkpoints of its first range
        writer = self.writers[cut]
        writer.feed(stream[:at])
        writer.rewind()
        point = writer.reconnected(SESSION.stream_mac())
        self.assertTrue(point.in_file)
        self.assertEqual((writer.verified.file.path, writer.verified.file.start), (b"ibdata1", 0))
        self.assertGreaterEqual(point.offset, 4 * MB)
        # what arrived after the last checkpoint is gone (a resume may not cover it: holes are not sent)
        partial = os.open(f"/proc/self/fd/{self.shared.ranged._files[b'ibdata1'].fd}", os.O_RDONLY)  # write-only
        self.addCleanup(os.close, partial)
        self.assertEqual(os.pread(partial, MB, point.offset), bytes(MB))
        self.assertNotEqual(os.pread(partial, 4096, point.offset - 4096), bytes(4096))
        writer.feed(self._stream(cut, resume=point))
        for lane, other in enumerate(self.writers):
            if lane != cut:
                other.feed(streams[lane])
        self.assertEqual(self._finish_all(self.writers), ["ok"] * LANES)
        self.assertEqual(describe_tree(self.target), describe_tree(self.source))

    def test_a_file_missing_a_range_is_never_moved_in(self):
        self.shared.lanes = 2  # the third lane's ranges never come
        for lane in range(2):
            self.writers[lane].feed(self._stream(lane))
        outcomes = self._finish_all(self.writers[:2])
        self.assertEqual(len([o for o in outcomes if "did not arrive whole" in o]), 1, outcomes)
        self.assertEqual(len([o for o in outcomes if "another stream of the seed failed" in o]), 1, outcomes)
        for writer in self.writers:
            writer.discard()
        self.assertEqual(os.listdir(self.target), [])

    def test_ranges_announcing_different_files_are_refused(self):
        entry = Entry(EntryKind.FILE, b"big", 0o640, 7, size=16 * MB, part=(0, 8 * MB))
        other = Entry(EntryKind.FILE, b"big", 0o640, 7, size=24 * MB, part=(8 * MB, 8 * MB))
        self.writers[0].feed(protocol.frame(Kind.ENTRY, entry.encode()))
        self.writers[0]._disk.close(discard=False)  # wait for the disk thread to make the file
        with self.assertRaisesRegex(ProtocolError, "the ranges of 'big' describe different files"):
            self.writers[1].feed(protocol.frame(Kind.ENTRY, other.encode()))
            self.writers[1]._disk.close(discard=False)
