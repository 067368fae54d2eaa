"""The seed wire format, stream decoding and the receiver's handshake, without a network."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading

from hypothesis import given, settings, strategies as st
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from orchagent.seed import protocol
from orchagent.seed.pipe import Closed, Pipe
from orchagent.seed.protocol import ChecksumMismatch, Entry, EntryKind, Kind, ProtocolError
from orchagent.seed.transfer import SeedReceiverServer, _ReceiverProtocol
from orchagent.seed.tree import RECEIVE_BUFFERS, TreeReader, TreeWriter
from tests.support.seed_trees import build_tree, describe_tree

SECRET = b"s3cret"


def tree_stream(root: str) -> bytes:
    return b"".join(part for batch in TreeReader(root, chunk_bytes=64 * 1024).batches() for part in batch.parts)


class Recorder:
    """A StreamHandler that notes what it was told (data joined per file)."""

    def __init__(self) -> None:
        self.calls: list = []

    def totals(self, files, nbytes):
        self.calls.append(("totals", files, nbytes))

    def entry(self, entry):
        self.calls.append(("entry", entry))

    def data(self, offset, piece):
        if self.calls[-1][0] == "data" and self.calls[-1][1] + len(self.calls[-1][2]) == offset:
            self.calls[-1] = ("data", self.calls[-1][1], self.calls[-1][2] + bytes(piece))
        else:
            self.calls.append(("data", offset, bytes(piece)))

    def file_end(self):
        self.calls.append(("file_end",))

    def end(self, files, nbytes):
        self.calls.append(("end", files, nbytes))


class FramingTests(SynchronousTestCase):
    def test_frames_survive_any_split(self):
        stream = protocol.frame(Kind.HELLO, b"x" * 300) + protocol.frame(Kind.DONE) + protocol.frame(Kind.FAIL, b"why")
        frames = protocol.FrameBuffer()
        seen = []
        for byte in stream:
            frames.feed(bytes([byte]))
            seen.extend(frames.frames())
        self.assertEqual(seen, [(Kind.HELLO, b"x" * 300), (Kind.DONE, b""), (Kind.FAIL, b"why")])

    def test_oversized_and_unknown_frames_are_refused(self):
        frames = protocol.FrameBuffer()
        frames.feed(protocol.HEADER.pack(Kind.AUTH, 10**6))
        self.assertRaises(ProtocolError, list, frames.frames())
        frames = protocol.FrameBuffer()
        frames.feed(protocol.HEADER.pack(99, 0))
        self.assertRaises(ProtocolError, list, frames.frames())

    def test_entries_round_trip_with_any_bytes_in_names(self):
        entry = Entry(EntryKind.SYMLINK, b"odd \n\xff/name", 0o4755, -5, 0, 27, 28, b"mysql", b"adm", b"../x")
        self.assertEqual(protocol.parse_entry(entry.encode()), entry)

    def test_unsafe_paths_are_refused(self):
        for path in (b"", b"/etc/passwd", b"a/../../b", b"..", b"a//b", b"./a", b"a/\0"):
            entry = Entry(EntryKind.FILE, path, 0o644, 0)
            self.assertRaises(ProtocolError, protocol.parse_entry, entry.encode())


class HandshakeTests(SynchronousTestCase):
    def setUp(self):
        self.receiver_nonce, self.sender_nonce = protocol.new_nonce(), protocol.new_nonce()

    def _auth(self, secret: bytes, seed_id: str = "42") -> protocol.Auth:
        kind, payload = next(self._frames(protocol.auth(secret, seed_id, self.receiver_nonce, self.sender_nonce)))
        self.assertEqual(kind, Kind.AUTH)
        return protocol.parse_auth(payload)

    def _frames(self, data: bytes):
        frames = protocol.FrameBuffer()
        frames.feed(data)
        return frames.frames()

    def test_sender_proof_needs_the_secret_and_the_receivers_nonce(self):
        self.assertTrue(self._auth(SECRET).valid(SECRET, self.receiver_nonce))
        self.assertEqual(self._auth(SECRET).seed_id, "42")
        self.assertFalse(self._auth(b"other").valid(SECRET, self.receiver_nonce))
        self.assertFalse(self._auth(SECRET).valid(SECRET, protocol.new_nonce()))  # no replay

    def test_receiver_proves_itself_back(self):
        _, payload = next(self._frames(protocol.accept(SECRET, "42", self.receiver_nonce, self.sender_nonce)))
        self.assertTrue(protocol.accept_valid(payload, SECRET, "42", self.receiver_nonce, self.sender_nonce))
        self.assertFalse(protocol.accept_valid(payload, SECRET, "43", self.receiver_nonce, self.sender_nonce))
        self.assertFalse(protocol.accept_valid(payload, b"other", "42", self.receiver_nonce, self.sender_nonce))

    def test_hello_checks_magic_and_version(self):
        _, payload = next(self._frames(protocol.hello(self.receiver_nonce)))
        self.assertEqual(protocol.parse_hello(payload), self.receiver_nonce)
        self.assertRaises(ProtocolError, protocol.parse_hello, b"HTTP/1.1" + payload[8:])
        bumped = payload[:8] + (protocol.VERSION + 1).to_bytes(2, "big") + payload[10:]
        self.assertRaisesRegex(ProtocolError, "version", protocol.parse_hello, bumped)


class StreamTests(SynchronousTestCase):
    @classmethod
    def setUpClass(cls):
        cls.base = tempfile.mkdtemp()
        cls.root = os.path.join(cls.base, "tree")
        build_tree(cls.root, big_bytes=200 * 1024, small_files=5)
        cls.stream = tree_stream(cls.root)
        cls.expected = Recorder()
        protocol.StreamDecoder(cls.expected).feed(cls.stream)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.base)

    def test_stream_describes_the_tree(self):
        kinds = [call[0] for call in self.expected.calls]
        self.assertEqual(kinds[0], "totals")
        self.assertEqual(kinds[-1], "end")
        self.assertEqual(self.expected.calls[0][1:], self.expected.calls[-1][1:])
        sparse = [i for i, c in enumerate(self.expected.calls) if c[0] == "entry" and c[1].path == b"sparse.ibd"][0]
        self.assertEqual(self.expected.calls[sparse + 1][:2], ("data", 8 * 1024 * 1024))  # the hole is not sent
        self.assertEqual(self.expected.calls[sparse + 2], ("file_end",))

    @settings(max_examples=15, deadline=None)
    @given(st.lists(st.integers(min_value=1, max_value=70000), min_size=1, max_size=40))
    def test_decoding_does_not_depend_on_chunking(self, sizes):
        recorder = Recorder()
        decoder = protocol.StreamDecoder(recorder)
        at, i = 0, 0
        while at < len(self.stream):
            decoder.feed(self.stream[at:at + sizes[i % len(sizes)]])
            at += sizes[i % len(sizes)]
            i += 1
        self.assertEqual(recorder.calls, self.expected.calls)

    def test_any_flipped_data_byte_fails_that_file(self):
        at = self.stream.index(b"middle")  # inside the sparse file's data
        corrupted = self.stream[:at] + b"M" + self.stream[at + 1:]
        with self.assertRaisesRegex(ChecksumMismatch, "sparse.ibd"):
            protocol.StreamDecoder(Recorder()).feed(corrupted)

    def test_sender_failure_is_reported(self):
        with self.assertRaisesRegex(protocol.TransferFailed, "the sender failed: disk on fire"):
            protocol.StreamDecoder(Recorder()).feed(protocol.reason_frame(Kind.FAIL, "disk on fire"))


class TreeWriterTests(SynchronousTestCase):
    def test_restores_the_tree_through_a_hidden_staging_directory(self):
        source, target = self.mktemp(), self.mktemp()
        build_tree(source, big_bytes=100 * 1024, small_files=5)
        os.makedirs(target)
        writer = TreeWriter(target, "9")
        writer.start()
        self.assertEqual(os.listdir(target), [".orchagent-seed-9"])
        writer.feed(tree_stream(source))
        writer.finish()
        self.assertEqual(describe_tree(target), describe_tree(source))

    def _write(self, *entries: Entry) -> TreeWriter:
        target = self.mktemp()
        os.makedirs(target)
        writer = TreeWriter(target, "9")
        writer.start()
        self.addCleanup(writer.discard)
        for entry in entries:
            writer.feed(protocol.frame(Kind.ENTRY, entry.encode()))
        return writer

    def test_never_writes_through_a_symlink(self):
        link = Entry(EntryKind.SYMLINK, b"etc", 0o777, 0, target=b"/etc")
        sneaky = Entry(EntryKind.FILE, b"etc/passwd", 0o644, 0, size=1)
        with self.assertRaisesRegex(ProtocolError, "arrived before its directory"):
            self._write(link, sneaky)

    def test_a_truncated_stream_is_not_finished(self):
        writer = self._write(Entry(EntryKind.DIR, b"d", 0o755, 0))
        self.assertRaisesRegex(protocol.TransferFailed, "ended before the sender finished", writer.finish)

    def _started(self, **tree) -> tuple[str, bytes, TreeWriter]:
        """A source tree (``build_tree`` options), its stream, and a started writer into an empty target."""
        source, target = self.mktemp(), self.mktemp()
        build_tree(source, **tree)
        os.makedirs(target)
        writer = TreeWriter(target, "9")
        writer.start()
        return source, tree_stream(source), writer

    def test_receive_buffers_are_reused_only_after_their_data_is_written(self):
        source, stream, writer = self._started(big_bytes=3 * 1024 * 1024, small_files=40)
        at, seen = 0, set()
        while at < len(stream):
            buffer = writer.free_buffer()  # a buffer reused too early would corrupt a file
            seen.add(id(buffer.obj))
            count = min(len(buffer), 100_000, len(stream) - at)
            buffer[:count] = stream[at:at + count]
            writer.feed(buffer[:count])
            at += count
        writer.finish()
        self.assertEqual(describe_tree(writer.datadir), describe_tree(source))
        self.assertEqual(len(seen), RECEIVE_BUFFERS)

    def test_chunks_fed_as_bytes_wait_for_a_receive_buffer(self):
        # Under TLS the stream arrives as bytes: copied into the receive buffers, it waits for
        # a slow disk instead of piling up in the disk thread's queue (memory stays flat).
        source, stream, writer = self._started(big_bytes=8 * 1024 * 1024, small_files=5)
        disk_may_go = threading.Event()
        self.addCleanup(disk_may_go.set)
        write_data = writer._write_data
        writer._write_data = lambda offset, piece: (disk_may_go.wait(), write_data(offset, piece))
        fed = []

        def feed_all():
            for at in range(0, len(stream), 1024 * 1024):
                writer.feed(stream[at:at + 1024 * 1024])
                fed.append(at)

        feeder = threading.Thread(target=feed_all, daemon=True)
        feeder.start()
        feeder.join(0.5)
        self.assertLessEqual(len(fed), RECEIVE_BUFFERS)  # of 9 chunks: the rest waits for the disk
        disk_may_go.set()
        feeder.join(10)
        writer.finish()
        self.assertEqual(describe_tree(writer.datadir), describe_tree(source))

    def test_files_named_like_partial_files_arrive_intact(self):
        # Partial files live next to their final names, so the tree may hold those names itself.
        source, target = self.mktemp(), self.mktemp()
        os.makedirs(os.path.join(source, "db"))
        for name, data in ((".orchagent-partial-2", b"two"), ("b", b"bee"), ("db/.orchagent-partial-4", b"four"),
                           ("db/x", b"ex")):
            with open(os.path.join(source, name), "wb") as f:
                f.write(data)
        os.makedirs(target)
        writer = TreeWriter(target, "9")
        writer.start()
        writer.feed(tree_stream(source))
        writer.finish()
        self.assertEqual(describe_tree(target), describe_tree(source))

    def test_a_disk_failure_surfaces_and_never_blocks_the_receiving_thread(self):
        # A file arriving at a directory's path fails on the disk thread (the rename).
        writer = self._write(Entry(EntryKind.DIR, b"d", 0o755, 0))
        payload = Entry(EntryKind.FILE, b"d", 0o644, 0, size=0).encode()
        digest = hashlib.sha256(payload).digest()
        writer.feed(protocol.frame(Kind.ENTRY, payload) + protocol.frame(Kind.FILE_END, digest))
        with self.assertRaises(IsADirectoryError):
            for _ in range(10 * RECEIVE_BUFFERS):  # more buffers than exist: they keep coming back
                buffer = writer.free_buffer()
                writer.feed(buffer[:0])
            writer.finish()

    def test_discard_removes_the_staging_directory(self):
        writer = self._write(Entry(EntryKind.DIR, b"d", 0o755, 0), Entry(EntryKind.FILE, b"d/f", 0o644, 0, size=5))
        writer.discard()
        self.assertEqual(os.listdir(writer.datadir), [])


class PipeTests(SynchronousTestCase):
    def test_reports_full_and_drains(self):
        room = []
        pipe = Pipe(10, on_room=lambda: room.append(True))
        self.assertFalse(pipe.put(b"a", 6))
        self.assertTrue(pipe.put(b"b", 5))
        self.assertEqual(pipe.get_wait(), b"a")
        self.assertEqual(room, [True])  # down to 5 <= 10 // 2: the producer may resume
        pipe.finish()
        self.assertEqual(pipe.get_wait(), b"b")
        self.assertIsNone(pipe.get_wait())

    def test_a_waiting_consumer_thread_wakes_for_each_item(self):
        pipe = Pipe(1)  # the producer waits for room after every item
        received = []

        def consume():
            while (item := pipe.get_wait()) is not None:
                received.append(item)

        def produce():
            for i in range(100):
                pipe.put_wait(i, 1)
            pipe.finish()

        threads = [threading.Thread(target=consume, daemon=True), threading.Thread(target=produce, daemon=True)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        pipe.close()  # frees a stuck thread if the test failed
        self.assertEqual(received, list(range(100)))

    def test_close_wakes_both_sides(self):
        pipe = Pipe(1)
        pipe.put(b"x", 1)
        pipe.close()
        self.assertRaises(Closed, pipe.put_wait, b"y", 1)
        self.assertRaises(Closed, pipe.get_wait)
        self.assertIsNone(pipe.get())


class ReceiverHandshakeTests(SynchronousTestCase):
    """The receiver's side of the handshake over a StringTransport, with a fake clock."""

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.server = SeedReceiverServer(self.clock, secret=SECRET, stall_timeout=30)
        self.transport = StringTransport()
        self.connection = _ReceiverProtocol(self.server)
        self.connection.makeConnection(self.transport)
        frames = protocol.FrameBuffer()
        frames.feed(self.transport.value())
        (kind, payload), = frames.frames()
        self.assertEqual(kind, Kind.HELLO)
        self.nonce = protocol.parse_hello(payload)
        self.transport.clear()

    def _answer(self) -> tuple[Kind, bytes]:
        frames = protocol.FrameBuffer()
        frames.feed(self.transport.value())
        (answer,) = frames.frames()
        return answer

    def test_unarmed_seed_is_refused(self):
        self.connection.dataReceived(protocol.auth(SECRET, "5", self.nonce, protocol.new_nonce()))
        self.assertEqual(self._answer(), (Kind.REFUSE, b"no receive is armed for seed 5"))
        self.assertTrue(self.transport.disconnecting)

    def test_wrong_secret_is_refused_and_noted(self):
        transfer = self.server.arm("5", "/nonexistent")
        self.connection.dataReceived(protocol.auth(b"wrong", "5", self.nonce, protocol.new_nonce()))
        kind, reason = self._answer()
        self.assertEqual(kind, Kind.REFUSE)
        self.assertIn(b"different SeedTransferSecret", reason)
        self.assertTrue(self.transport.disconnecting)
        self.assertIn("different SeedTransferSecret", transfer.last_refusal)
        self.assertFalse(transfer.done)

    def test_an_armed_receive_fails_when_no_sender_authenticates_in_time(self):
        transfer = self.server.arm("5", "/nonexistent")
        self.connection.dataReceived(protocol.auth(b"wrong", "5", self.nonce, protocol.new_nonce()))
        self.clock.advance(29)
        self.assertFalse(transfer.done)  # a refusal alone does not end it
        self.clock.advance(1)
        self.assertEqual(transfer.state, "failed")
        failure = self.failureResultOf(transfer.when_done(), protocol.TransferFailed)
        message = str(failure.value)
        self.assertIn("no sender authenticated for seed 5 within 30 s; last refused a sender from", message)
        self.assertIn("different SeedTransferSecret", message)
        self.server.arm("5", "/nonexistent")  # disarmed, so it can be armed again

    def test_garbage_is_refused(self):
        self.connection.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        kind, _ = self._answer()
        self.assertEqual(kind, Kind.REFUSE)

    def test_silence_before_authentication_times_out(self):
        self.clock.advance(29)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertEqual(self._answer(), (Kind.REFUSE, b"the sender did not authenticate for 30 seconds"))
        self.assertTrue(self.transport.disconnecting)

    def test_a_second_armed_receive_for_one_seed_conflicts(self):
        self.server.arm("5", "/nonexistent")
        self.assertRaises(protocol.AgentError, self.server.arm, "5", "/nonexistent")

    def test_abort_of_an_unconnected_receive_is_immediate(self):
        transfer = self.server.arm("5", "/nonexistent")
        done = transfer.abort()
        self.assertIsNone(self.successResultOf(done))
        self.assertEqual(transfer.state, "aborted")
        self.server.arm("5", "/nonexistent")  # disarmed, so it can be armed again
