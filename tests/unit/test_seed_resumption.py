"""Resuming a seed after a dropped connection, without a network: the RESUME frame, the receiver's
account of what it verified, its rewind, and the sender's walk from the verified point."""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from orchagent.seed import authentication, protocol, resumption
from orchagent.seed.decoder import StreamDecoder
from orchagent.seed.protocol import Entry, EntryKind, Kind, ProtocolError, TransferFailed
from orchagent.seed.resumption import CHECKPOINT_BYTES, START, ResumePoint, Verified
from tests.support.seed_trees import SECRET, build_tree, describe_tree, split_frames, tree_stream, writer_into

BIG = 2 * CHECKPOINT_BYTES + 12345  # ibdata1: two checkpoints inside


def session() -> authentication.Session:
    """A fresh connection's session for seed 9 (new nonces: a new key)."""
    return authentication.Session.derive(SECRET, "9", authentication.new_nonce(), authentication.new_nonce())


def payload(frame: bytes) -> bytes:
    return frame[protocol.HEADER.size:]


class ResumeFrameTests(SynchronousTestCase):
    """RESUME is bound to its connection's key: no one else can make, alter or replay one."""

    point = ResumePoint(entries=7, files=4, file_bytes=1000, in_file=True, offset=4096, last_path=b"db/t.ibd")

    def test_round_trip(self):
        one = session()
        frame = resumption.resume_frame(one, self.point)
        self.assertEqual(frame[0], Kind.RESUME)
        self.assertEqual(resumption.parse_resume(one, payload(frame)), self.point)
        self.assertEqual(self.point.nbytes, 1000 + 4096)

    def test_another_connections_or_an_altered_frame_is_refused(self):
        one, other = session(), session()
        frame = payload(resumption.resume_frame(one, self.point))
        with self.assertRaisesRegex(ProtocolError, "resume frame is not authentic"):
            resumption.parse_resume(other, frame)  # replayed into a later connection
        altered = bytearray(frame)
        altered[7] ^= 1  # entries: skip one more
        with self.assertRaisesRegex(ProtocolError, "not authentic"):
            resumption.parse_resume(one, bytes(altered))
        for bad in (b"", frame[:20], frame + b"x"):
            self.assertRaises(ProtocolError, resumption.parse_resume, one, bad)

    def test_inconsistent_points_are_malformed(self):
        one = session()
        for point in (ResumePoint(entries=0, in_file=True, offset=5), ResumePoint(entries=3, offset=5),
                      ResumePoint(entries=1, files=2)):
            self.assertRaisesRegex(ProtocolError, "malformed", resumption.parse_resume, one,
                                   payload(resumption.resume_frame(one, point)))

    def test_back_off_grows_and_stays_bounded(self):
        delays = [resumption.reconnect_delay(attempt) for attempt in range(20)]
        self.assertEqual(delays, sorted(delays))
        self.assertLessEqual(max(delays), 5)


class ReceivedTests(SynchronousTestCase):
    """A receiver remembers how its seeds ended, for the reconnect window, so a sender whose
    connection dropped hears the outcome (DONE again, or why the seed failed here)."""

    def setUp(self):
        self.clock = Clock()
        self.received = resumption.Received(self.clock, 30)

    def test_a_seed_received_whole_is_confirmed_and_a_failed_one_says_why(self):
        self.received.add("1")
        self.received.add("2", "the target disk caught fire")
        self.assertIn("1", self.received)
        self.assertIsNone(self.received.failure("1"))
        self.assertNotIn("2", self.received)
        self.assertEqual(self.received.failure("2"), "the target disk caught fire")
        self.assertIsNone(self.received.failure("3"))

    def test_only_for_the_reconnect_window_and_until_armed_anew(self):
        self.received.add("1")
        self.received.add("2", "aborted")
        self.received.forget("1")
        self.assertNotIn("1", self.received)
        self.clock.advance(31)
        self.assertIsNone(self.received.failure("2"))

    def test_bounded(self):
        for number in range(resumption.RECEIVED_KEPT + 5):
            self.received.add(str(number), "failed")
        self.assertIsNone(self.received.failure("0"))
        self.assertEqual(self.received.failure(str(resumption.RECEIVED_KEPT + 4)), "failed")


class VerifiedTests(SynchronousTestCase):
    """Only a matched tag moves the verified point; what came after it is what a drop undoes."""

    def test_tags_commit_entries_and_a_drop_undoes_the_rest(self):
        directory = Entry(EntryKind.DIR, b"db", 0o755, 0)
        small = Entry(EntryKind.FILE, b"db/a", 0o644, 0, size=10)
        big = Entry(EntryKind.FILE, b"db/b", 0o644, 0, size=100)
        link = Entry(EntryKind.SYMLINK, b"db/l", 0o777, 0, target=b"a")
        verified = Verified()
        for entry in (directory, small):
            verified.entry(entry)
        verified.file_end()
        self.assertEqual(verified.point, ResumePoint(entries=2, files=1, file_bytes=10, last_path=b"db/a"))
        verified.entry(big)
        verified.checkpoint(64)
        self.assertEqual(verified.point, ResumePoint(3, 1, 10, True, 64, b"db/b"))
        self.assertIs(verified.file, big)
        verified.checkpoint(96)  # the same file, further
        self.assertEqual((verified.point.entries, verified.point.offset), (3, 96))
        verified.file_end()
        verified.entry(link)
        self.assertEqual(verified.dropped(), [link])  # never verified: undone
        self.assertEqual(verified.point, ResumePoint(3, 2, 110, False, 0, b"db/b"))
        self.assertEqual(verified.dropped(), [])

    def test_a_tag_outside_a_file_is_refused(self):
        verified = Verified()
        verified.entry(Entry(EntryKind.DIR, b"db", 0o755, 0))
        self.assertRaises(ProtocolError, verified.checkpoint, 5)


class RewindTests(SynchronousTestCase):
    """A stream cut anywhere, rewound, and continued over a new session from the point the receiver
    names, arrives whole; nothing decoded after the last tag survives the rewind."""

    @classmethod
    def setUpClass(cls):
        cls.base = tempfile.mkdtemp()
        cls.source = os.path.join(cls.base, "source")
        build_tree(cls.source, big_bytes=BIG, small_files=30)
        cls.first = tree_stream(cls.source)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.base)

    def _target(self) -> str:
        target = self.mktemp()
        os.makedirs(target)
        return target

    def test_a_stream_cut_anywhere_resumes_whole(self):
        # cuts inside the first files, inside ibdata1 before and after its checkpoints, near the end
        for cut in (100, 3000, CHECKPOINT_BYTES // 2, CHECKPOINT_BYTES + 70000, BIG - 1000, len(self.first) - 40):
            with self.subTest(cut=cut):
                target = self._target()
                writer = writer_into(target)
                writer.start()
                self.addCleanup(writer.discard)
                writer.feed(self.first[:cut])
                thrown_away = writer.rewind()
                point = writer.verified.point
                self.assertEqual(writer.progress.bytes_done, point.nbytes)
                self.assertLessEqual(thrown_away, CHECKPOINT_BYTES + 64 * 1024)
                again = session()
                self.assertEqual(writer.reconnected(again.stream_mac()), point)
                writer.feed(tree_stream(self.source, again, resume=point))
                writer.finish()
                self.assertEqual(describe_tree(target), describe_tree(self.source))

    def _cut_after(self, kind: Kind, number: int, extra: int = 0) -> int:
        """Where the stream's ``number``-th frame of ``kind`` ends (plus ``extra`` bytes)."""
        frames = split_frames(self.first)
        index = [i for i, frame in enumerate(frames) if frame[0] == kind][number]
        return sum(map(len, frames[:index + 1])) + extra

    def test_a_checkpoint_keeps_the_data_before_it(self):
        target = self._target()
        writer = writer_into(target)
        writer.start()
        self.addCleanup(writer.discard)
        writer.feed(self.first[:self._cut_after(Kind.CHECKPOINT, 1, extra=5000)])
        self.assertEqual(writer.rewind(), 5000 - protocol.DATA_START)  # the data that followed the tag
        point = writer.verified.point
        self.assertEqual((point.in_file, point.offset, point.last_path), (True, 2 * CHECKPOINT_BYTES, b"ibdata1"))
        partial = [name for name in os.listdir(os.path.join(target, ".orchagent-seed-9", "tree"))
                   if name.startswith(".orchagent-partial")]
        self.assertEqual(len(partial), 1)
        self.assertEqual(os.path.getsize(os.path.join(target, ".orchagent-seed-9", "tree", partial[0])),
                         2 * CHECKPOINT_BYTES)

    def test_unverified_entries_are_undone(self):
        # A man in the middle appends entries (he cannot tag them) and cuts the connection: none
        # of them may stay in the staging tree, nor count.
        cut = self._cut_after(Kind.FILE_END, 3)
        planted = [Entry(EntryKind.DIR, b"planted", 0o777, 0), Entry(EntryKind.SYMLINK, b"planted/etc", 0o777, 0,
                                                                     target=b"/etc"),
                   Entry(EntryKind.FILE, b"planted/evil", 0o644, 0, size=5)]
        injected = b"".join(protocol.frame(Kind.ENTRY, entry.encode()) for entry in planted)
        injected += protocol.data_header(0, 5) + b"evil!"
        target = self._target()
        writer = writer_into(target)
        writer.start()
        self.addCleanup(writer.discard)
        writer.feed(self.first[:cut] + injected)
        writer.rewind()
        self.assertNotIn(b"planted", writer.verified.point.last_path)
        tree = os.path.join(target, ".orchagent-seed-9", "tree")
        self.assertFalse(os.path.lexists(os.path.join(tree, "planted")))
        again = session()
        writer.reconnected(again.stream_mac())
        writer.feed(tree_stream(self.source, again, resume=writer.verified.point))
        writer.finish()
        self.assertEqual(describe_tree(target), describe_tree(self.source))

    def test_a_resumed_stream_must_continue_the_same_file(self):
        target = self._target()
        writer = writer_into(target)
        writer.start()
        self.addCleanup(writer.discard)
        writer.feed(self.first[:CHECKPOINT_BYTES + 70000])
        writer.rewind()
        point = writer.verified.point
        self.assertTrue(point.in_file, point)
        again = session()
        writer.reconnected(again.stream_mac())
        other = Entry(EntryKind.FILE, point.last_path, 0o644, 0, size=BIG + 1)  # grew at the source meanwhile
        with self.assertRaisesRegex(ProtocolError, "changed at the source"):
            writer.feed(protocol.frame(Kind.ENTRY, other.encode()))

    def test_a_hot_seeds_stream_is_not_rewound(self):
        writer = writer_into(self._target())
        writer.start()
        self.addCleanup(writer.discard)
        writer.source_port = 3306  # as after its STREAM frame
        self.assertRaisesRegex(TransferFailed, "hot seed", writer.rewind)


class DecoderOrderTests(SynchronousTestCase):
    """A file's data only moves forward, so a rewind's cut at the last verified offset removes every
    unverified byte."""

    def test_data_before_earlier_data_is_refused(self):
        mac = authentication.StreamMac(b"k" * 32)
        decoder = StreamDecoder(_Ignore(), mac)
        entry = Entry(EntryKind.FILE, b"f", 0o644, 0, size=100)
        decoder.feed(protocol.frame(Kind.ENTRY, entry.encode()) + protocol.data_header(50, 10) + b"x" * 10)
        with self.assertRaisesRegex(ProtocolError, "out of order"):
            decoder.feed(protocol.data_header(40, 5) + b"y" * 5)


class _Ignore:
    def __getattr__(self, name):
        return lambda *args: None


class SkipVerifiedTests(SynchronousTestCase):
    """The sender's walk skips exactly what the receiver verified, and refuses a source that changed."""

    def _walk(self, names):
        return [(name, b"/x/" + name, os.stat_result((mode,) + (0,) * 9)) for name, mode in names]

    def test_skips_entries_and_keeps_the_file_in_progress(self):
        walk = self._walk([(b"a", 0o40755), (b"sock", 0o140755), (b"a/f", 0o100644), (b"a/g", 0o100644)])
        names = [item[0] for item in resumption.skip_verified(walk, ResumePoint(2, 1, 5, False, 0, b"a/f"))]
        self.assertEqual(names, [b"a/g"])
        names = [item[0] for item in resumption.skip_verified(walk, ResumePoint(2, 0, 0, True, 9, b"a/f"))]
        self.assertEqual(names, [b"a/f", b"a/g"])
        self.assertEqual(len(list(resumption.skip_verified(walk, START))), 4)

    def test_a_changed_source_cannot_be_resumed(self):
        walk = self._walk([(b"a", 0o40755), (b"a/f", 0o100644)])
        for point in (ResumePoint(2, 1, 5, False, 0, b"a/other"), ResumePoint(5, 1, 5, False, 0, b"a/f")):
            with self.assertRaisesRegex(TransferFailed, "source directory changed"):
                list(resumption.skip_verified(walk, point))
