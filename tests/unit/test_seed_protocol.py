"""The seed wire format, stream decoding and the receiver's handshake, without a network."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading

from hypothesis import given, settings, strategies as st
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from orchagent.seed import authentication, protocol
from orchagent.seed.decoder import StreamDecoder
from orchagent.seed.pipe import Closed, Pipe
from orchagent.seed.protocol import ChecksumMismatch, Entry, EntryKind, Kind, ProtocolError
from orchagent.seed.reader import StreamReader
from orchagent.seed.receiver import SeedReceiverServer, _ReceiverProtocol
from orchagent.seed.writer import RECEIVE_BUFFERS, TreeWriter
from tests.support.seed_trees import (SECRET, SESSION, build_tree, describe_tree, split_frames, tree_stream,
                                     writer_into)

def decoder(handler) -> StreamDecoder:
    return StreamDecoder(handler, SESSION.stream_mac())


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

    def checkpoint(self, offset):
        pass  # a tag inside a large file (resume); what these tests compare is the data around it

    def file_end(self):
        self.calls.append(("file_end",))

    def end(self, files, nbytes):
        self.calls.append(("end", files, nbytes))

    def stream(self, port):
        self.calls.append(("stream", port))


class FramingTests(SynchronousTestCase):
    """Seed frames survive any split, and oversized, unknown or unsafe ones are refused."""

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
    """Both proofs need the secret, both nonces, the seed id and (over TLS) the TLS session."""

    def setUp(self):
        self.receiver_nonce, self.sender_nonce = authentication.new_nonce(), authentication.new_nonce()

    def _session(self, secret: bytes = SECRET, seed_id: str = "42", receiver_nonce: bytes | None = None,
                 tls_material: bytes = b"") -> authentication.Session:
        return authentication.Session.derive(secret, seed_id, receiver_nonce or self.receiver_nonce,
                                             self.sender_nonce, tls_material)

    def _auth(self, session: authentication.Session) -> authentication.Auth:
        kind, payload = next(self._frames(authentication.auth(session)))
        self.assertEqual(kind, Kind.AUTH)
        return authentication.parse_auth(payload)

    def _frames(self, data: bytes):
        frames = protocol.FrameBuffer()
        frames.feed(data)
        return frames.frames()

    def test_sender_proof_needs_the_secret_and_the_receivers_nonce(self):
        auth = self._auth(self._session())
        self.assertEqual((auth.seed_id, auth.sender_nonce), ("42", self.sender_nonce))
        self.assertTrue(auth.valid(self._session()))
        self.assertFalse(self._auth(self._session(b"other")).valid(self._session()))
        self.assertFalse(auth.valid(self._session(receiver_nonce=authentication.new_nonce())))  # no replay
        self.assertFalse(auth.valid(self._session(seed_id="43")))

    def test_receiver_proves_itself_back(self):
        _, payload = next(self._frames(authentication.accept(self._session())))
        self.assertTrue(self._session().proves(b"receiver", payload))
        self.assertFalse(self._session(seed_id="43").proves(b"receiver", payload))
        self.assertFalse(self._session(b"other").proves(b"receiver", payload))
        self.assertFalse(self._session().proves(b"sender", payload))  # one role's proof is not another's
        _, done = next(self._frames(authentication.done(self._session())))
        self.assertTrue(self._session().proves(b"done", done))
        self.assertFalse(self._session().proves(b"receiver", done))

    def test_the_tls_session_is_part_of_the_key(self):
        # Certificates alone (empty secret): the TLS session's material makes the key secret,
        # and proofs made in one TLS session do not pass in another.
        one, other = os.urandom(32), os.urandom(32)
        self.assertNotEqual(self._session(b"", tls_material=one).key, self._session(b"", tls_material=other).key)
        self.assertNotEqual(self._session(b"", tls_material=one).key, self._session(b"").key)
        auth = self._auth(self._session(tls_material=one))
        self.assertTrue(auth.valid(self._session(tls_material=one)))
        self.assertFalse(auth.valid(self._session(tls_material=other)))

    def test_hello_checks_magic_and_version(self):
        _, payload = next(self._frames(authentication.hello(self.receiver_nonce)))
        self.assertEqual(authentication.parse_hello(payload), self.receiver_nonce)
        self.assertRaises(ProtocolError, authentication.parse_hello, b"HTTP/1.1" + payload[8:])
        older = payload[:8] + (6).to_bytes(2, "big") + payload[10:]  # protocol v6 sends large files whole
        self.assertRaisesRegex(ProtocolError, "version 6, this agent 7: upgrade both agents",
                               authentication.parse_hello, older)

    def test_oversized_seed_ids_are_malformed(self):
        payload = bytes([65]) + b"9" * 65 + self.sender_nonce + bytes([0, 1]) + bytes(authentication.TAG_BYTES)
        self.assertRaisesRegex(ProtocolError, "malformed", authentication.parse_auth, payload)

    def test_each_lane_has_its_own_key_and_the_auth_names_it(self):
        def lane(number: int, lanes: int) -> authentication.Session:
            return authentication.Session.derive(SECRET, "42", self.receiver_nonce, self.sender_nonce, b"",
                                                 number, lanes)
        auth = self._auth(lane(2, 3))
        self.assertEqual((auth.lane, auth.lanes), (2, 3))
        self.assertTrue(auth.valid(lane(2, 3)))
        self.assertEqual((self._auth(self._session()).lane, self._auth(self._session()).lanes), (0, 1))
        keys = {lane(n, 3).key for n in range(3)} | {lane(0, 1).key, lane(0, 2).key}
        self.assertEqual(len(keys), 5)  # a lane's proof and stream are no other lane's (nor another count's)
        self.assertFalse(auth.valid(lane(1, 3)))
        self.assertFalse(auth.valid(lane(2, 4)))

    def test_lanes_out_of_range_are_malformed(self):
        valid = authentication.auth(self._session())[protocol.HEADER.size:]
        lanes_at = 1 + 2 + authentication.NONCE_BYTES  # seed id "42", then the nonce
        for lane, lanes in ((1, 1), (0, 0), (3, 2), (0, authentication.MAX_LANES + 1)):
            payload = valid[:lanes_at] + bytes([lane, lanes]) + valid[lanes_at + 2:]
            self.assertRaisesRegex(ProtocolError, "malformed", authentication.parse_auth, payload)
        self.assertRaises(ValueError, authentication.Session.derive, SECRET, "42", self.receiver_nonce,
                          self.sender_nonce, b"", 2, 2)


class StreamTests(SynchronousTestCase):
    """The stream describes the tree, decodes under any chunking, and is authenticated as a whole."""

    @classmethod
    def setUpClass(cls):
        cls.base = tempfile.mkdtemp()
        cls.root = os.path.join(cls.base, "tree")
        build_tree(cls.root, big_bytes=200 * 1024, small_files=5)
        cls.stream = tree_stream(cls.root)
        cls.expected = Recorder()
        decoder(cls.expected).feed(cls.stream)

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
        decoding = decoder(recorder)
        at, i = 0, 0
        while at < len(self.stream):
            decoding.feed(self.stream[at:at + sizes[i % len(sizes)]])
            at += sizes[i % len(sizes)]
            i += 1
        self.assertEqual(recorder.calls, self.expected.calls)

    def test_any_flipped_data_byte_fails_that_file(self):
        at = self.stream.index(b"middle")  # inside the sparse file's data
        corrupted = self.stream[:at] + b"M" + self.stream[at + 1:]
        with self.assertRaisesRegex(ChecksumMismatch, "'sparse.ibd' is not authentic"):
            decoder(Recorder()).feed(corrupted)

    def test_a_stream_made_with_another_session_key_fails_its_first_file(self):
        other = authentication.Session.derive(b"not the secret", "9", authentication.new_nonce(),
                                              authentication.new_nonce())
        recorder = Recorder()
        with self.assertRaisesRegex(ChecksumMismatch, "is not authentic"):
            decoder(recorder).feed(tree_stream(self.root, other))
        self.assertNotIn(("file_end",), recorder.calls)

    def test_any_frame_altered_dropped_or_repeated_fails_the_stream(self):
        # Directories, symlinks, holes, counts: whatever a man in the middle changes, the stream
        # never ends as a success (per-file tags, and END's tag over the whole stream).
        frames = split_frames(self.stream)
        self.assertGreater(len(frames), 20)
        for i, frame in enumerate(frames):
            flipped = frame[:-1] + bytes([frame[-1] ^ 1])
            for variant in ([], [flipped], [frame, frame]):
                stream = b"".join(frames[:i] + variant + frames[i + 1:])
                with self.subTest(frame=i, variant=len(variant)):
                    decoding = decoder(Recorder())
                    try:
                        decoding.feed(stream)
                    except protocol.TransferFailed:
                        continue
                    self.assertEqual((i, variant), (len(frames) - 1, []))  # only a stream cut before END
                    self.assertFalse(decoding.ended)  # is not an error yet: the writer's finish() says so

    def test_data_frames_cannot_be_joined(self):
        # Two DATA frames joined into one, the second one's offset becoming file data: a MAC over
        # offsets and data alone (as v1's checksum was) sees the same bytes; this one covers headers.
        frames = split_frames(self.stream)
        first = [i for i, f in enumerate(frames) if f[0] == Kind.DATA and frames[i + 1][0] == Kind.DATA][0]
        payloads = [frame[protocol.HEADER.size:] for frame in frames[first:first + 2]]
        joined = protocol.frame(Kind.DATA, b"".join(payloads))
        stream = b"".join(frames[:first]) + joined + b"".join(frames[first + 2:])
        # (caught by the MAC, or earlier: the next frame's data would lie before the joined one's end)
        self.assertRaisesRegex(protocol.TransferFailed, "'ibdata1' is not authentic|'ibdata1' out of order",
                               decoder(Recorder()).feed, stream)

    def test_sender_failure_is_reported(self):
        with self.assertRaisesRegex(protocol.TransferFailed, "the sender failed: disk on fire"):
            decoder(Recorder()).feed(protocol.reason_frame(Kind.FAIL, "disk on fire"))


def hot_stream(data: bytes, port: int = 3306, compression: str = "none", ended=lambda: None) -> bytes:
    """What a hot seed's sender sends for a backup tool that wrote ``data`` (read from a pipe)."""
    read_end, write_end = os.pipe()
    writing = threading.Thread(target=lambda: (os.write(write_end, data), os.close(write_end)))
    writing.start()
    try:
        reader = StreamReader(read_end, port, SESSION.stream_mac(), ended, compression=compression)
        return b"".join(part for batch in reader.batches() for part in batch.parts)
    finally:
        writing.join()
        os.close(read_end)


class HotStreamTests(SynchronousTestCase):
    """A hot seed's stream (v4 STREAM): the tool's bytes in order, the MySQL port, authenticated, sealed
    only once the tool ended well."""

    data = os.urandom(100_000) + b"\0" * 3_000_000 + os.urandom(1000)

    def test_round_trip_with_and_without_compression(self):
        for compression in ("none", "zstd"):
            with self.subTest(compression=compression):
                stream = hot_stream(self.data, 13306, compression)
                recorder = Recorder()
                decoding = decoder(recorder)
                decoding.feed(stream)
                self.assertTrue(decoding.ended)
                self.assertEqual(recorder.calls, [("stream", 13306), ("data", 0, self.data), ("file_end",),
                                                  ("end", 1, len(self.data))])
                if compression == "zstd":
                    self.assertLess(len(stream), len(self.data) // 2)

    def test_any_frame_altered_dropped_or_repeated_fails_the_stream(self):
        frames = split_frames(hot_stream(os.urandom(3 * 1024 * 1024 + 5)))
        for i, frame in enumerate(frames):
            flipped = frame[:-1] + bytes([frame[-1] ^ 1])
            for variant in ([], [flipped], [frame, frame]):
                with self.subTest(frame=i, variant=len(variant)):
                    decoding = decoder(Recorder())
                    try:
                        decoding.feed(b"".join(frames[:i] + variant + frames[i + 1:]))
                    except protocol.TransferFailed:
                        continue
                    self.assertEqual((i, variant), (len(frames) - 1, []))
                    self.assertFalse(decoding.ended)

    def test_a_failed_tool_never_seals_the_stream(self):
        def failed():
            raise protocol.TransferFailed("mariabackup --backup failed: Access denied")

        read_end, write_end = os.pipe()
        os.write(write_end, b"partial")
        os.close(write_end)
        reader = StreamReader(read_end, 3306, SESSION.stream_mac(), failed)
        self.addCleanup(os.close, read_end)
        stream = b"".join(part for batch in reader.batches() for part in batch.parts)
        recorder = Recorder()
        with self.assertRaisesRegex(protocol.TransferFailed, "the sender failed: mariabackup --backup failed: "
                                                             "Access denied"):
            decoder(recorder).feed(stream)
        self.assertNotIn(("file_end",), recorder.calls)

    def test_a_bad_port_and_a_second_stream_are_refused(self):
        with self.assertRaisesRegex(ProtocolError, "bad MySQL port 0"):
            decoder(Recorder()).feed(hot_stream(b"x", port=0))
        stream = hot_stream(b"x")
        twice = split_frames(stream)
        with self.assertRaisesRegex(ProtocolError, "a second stream"):
            decoder(Recorder()).feed(b"".join(twice[:1] + twice[:1]))

    def test_a_writer_without_an_extractor_refuses_a_stream_clearly(self):
        writer = writer_into(self.mktemp())
        with self.assertRaisesRegex(ProtocolError, "stream, which this receiver cannot extract"):
            decoder(writer).feed(hot_stream(b"x"))


class TreeWriterTests(SynchronousTestCase):
    """The tree writer restores via a hidden staging directory, never writes through symlinks, reports disk failures."""

    def test_restores_the_tree_through_a_hidden_staging_directory(self):
        source, target = self.mktemp(), self.mktemp()
        build_tree(source, big_bytes=100 * 1024, small_files=5)
        os.makedirs(target)
        writer = writer_into(target)
        writer.start()
        self.assertEqual(os.listdir(target), [".orchagent-seed-9"])
        writer.feed(tree_stream(source))
        writer.finish()
        self.assertEqual(describe_tree(target), describe_tree(source))

    def _write(self, *entries: Entry) -> TreeWriter:
        target = self.mktemp()
        os.makedirs(target)
        writer = writer_into(target)
        writer.start()
        self.addCleanup(writer.discard)
        self.fed = [protocol.frame(Kind.ENTRY, entry.encode()) for entry in entries]
        for frame in self.fed:
            writer.feed(frame)
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
        writer = writer_into(target)
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
        # Bytes fed as bytes (what came with AUTH) are copied into the receive buffers: they wait
        # for a slow disk instead of piling up in the disk thread's queue (memory stays flat).
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
        writer = writer_into(target)
        writer.start()
        writer.feed(tree_stream(source))
        writer.finish()
        self.assertEqual(describe_tree(target), describe_tree(source))

    def test_a_disk_failure_surfaces_and_never_blocks_the_receiving_thread(self):
        # A file arriving at a directory's path fails on the disk thread (the rename).
        writer = self._write(Entry(EntryKind.DIR, b"d", 0o755, 0))
        entry = protocol.frame(Kind.ENTRY, Entry(EntryKind.FILE, b"d", 0o644, 0, size=0).encode())
        sender = SESSION.stream_mac()
        for frame in self.fed + [entry]:  # what _write sent, then the file
            sender.update(frame)
        writer.feed(entry + sender.file_end())
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
    """The bounded pipe between two worker threads holds its bound, drains and wakes both sides."""

    def test_the_producer_waits_for_room(self):
        pipe = Pipe(10)
        pipe.put_wait(b"a", 6)
        pipe.put_wait(b"b", 5)  # over the bound now: the next put waits
        third = threading.Thread(target=pipe.put_wait, args=(b"c", 1), daemon=True)
        third.start()
        third.join(0.2)
        self.assertTrue(third.is_alive())
        self.assertEqual(pipe.get_wait(), b"a")
        third.join(5)
        self.assertFalse(third.is_alive())
        pipe.finish()
        self.assertEqual([pipe.get_wait(), pipe.get_wait(), pipe.get_wait()], [b"b", b"c", None])

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
        pipe.put_wait(b"x", 1)
        pipe.close()
        self.assertRaises(Closed, pipe.put_wait, b"y", 1)
        self.assertRaises(Closed, pipe.get_wait)


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
        self.nonce = authentication.parse_hello(payload)
        self.transport.clear()

    def _answer(self) -> tuple[Kind, bytes]:
        frames = protocol.FrameBuffer()
        frames.feed(self.transport.value())
        (answer,) = frames.frames()
        return answer

    def _auth(self, secret: bytes, seed_id: str = "5") -> bytes:
        session = authentication.Session.derive(secret, seed_id, self.nonce, authentication.new_nonce())
        return authentication.auth(session)

    def _refusal_to_a_new_connection(self, attempt: bytes) -> bytes:
        connection = _ReceiverProtocol(self.server)
        transport = StringTransport()
        connection.makeConnection(transport)
        hello = transport.value()
        transport.clear()
        nonce = authentication.parse_hello(hello[protocol.HEADER.size:])
        connection.dataReceived(attempt(nonce))
        self.assertTrue(transport.disconnecting)
        return transport.value()

    def test_an_authenticated_sender_hears_that_the_seed_is_not_armed(self):
        self.connection.dataReceived(self._auth(SECRET))
        self.assertEqual(self._answer(), (Kind.REFUSE, b"no receive is armed for seed 5"))
        self.assertTrue(self.transport.disconnecting)

    def test_a_sender_reconnecting_for_a_seed_received_whole_hears_done(self):
        self.server.received.add("5")
        session = authentication.Session.derive(SECRET, "5", self.nonce, authentication.new_nonce())
        self.connection.dataReceived(authentication.auth(session))
        frames = protocol.FrameBuffer()
        frames.feed(self.transport.value())
        self.assertEqual(list(frames.frames()), [(Kind.ACCEPT, session.proof(b"receiver")),
                                                 (Kind.DONE, session.proof(b"done"))])
        self.assertTrue(self.transport.disconnecting)
        self.clock.advance(30)  # for as long as a sender tries to reconnect, no longer
        self.assertNotIn("5", self.server.received)

    def test_wrong_secret_is_refused_and_noted(self):
        transfer = self.server.arm("5", "/nonexistent")
        self.connection.dataReceived(self._auth(b"wrong"))
        self.assertEqual(self._answer(), (Kind.REFUSE, authentication.NOT_AUTHENTICATED.encode()))
        self.assertTrue(self.transport.disconnecting)
        self.assertIn("different SeedTransferSecret", transfer.last_refusal)  # the detail stays here
        self.assertFalse(transfer.done)

    def test_refusals_before_authentication_do_not_tell_which_seed_is_armed(self):
        self.server.arm("5", "/nonexistent")

        def wrong_secret(seed_id):
            return lambda nonce: authentication.auth(
                authentication.Session.derive(b"wrong", seed_id, nonce, authentication.new_nonce()))

        refusals = {self._refusal_to_a_new_connection(attempt) for attempt in (
            wrong_secret("5"), wrong_secret("6"),
            lambda nonce: protocol.reason_frame(Kind.FAIL, "seed protocol version 1"),
            lambda nonce: b"GET / HTTP/1.1\r\n\r\n")}
        self.assertEqual(refusals, {protocol.reason_frame(Kind.REFUSE, authentication.NOT_AUTHENTICATED)})

    def test_an_armed_receive_fails_when_no_sender_authenticates_in_time(self):
        transfer = self.server.arm("5", "/nonexistent")
        self.connection.dataReceived(self._auth(b"wrong"))
        self.clock.advance(29)
        self.assertFalse(transfer.done)  # a refusal alone does not end it
        self.clock.advance(1)
        self.assertEqual(transfer.state, "failed")
        failure = self.failureResultOf(transfer.when_done(), protocol.TransferFailed)
        message = str(failure.value)
        self.assertIn("no sender authenticated for seed 5 within 30 s; last refused a sender from", message)
        self.assertIn("different SeedTransferSecret", message)
        self.server.arm("5", "/nonexistent")  # disarmed, so it can be armed again

    def test_silence_before_authentication_times_out(self):
        self.clock.advance(29)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertEqual(self._answer(), (Kind.REFUSE, authentication.NOT_AUTHENTICATED.encode()))
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
