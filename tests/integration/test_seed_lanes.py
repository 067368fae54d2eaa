"""Parallel streams (SeedParallelStreams): one seed over several connections, both sides in this process,
through the relay of test_seed_resume.py."""

from __future__ import annotations

import os

from twisted.internet import reactor, threads
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater

from orchagent.seed.protocol import TransferFailed
from orchagent.seed.resumption import CHECKPOINT_BYTES
from orchagent.seed.sender import send_tree
from tests.integration.test_seed_resume import MB, SECRET, LinkedSeed
from tests.support.deferreds import inline
from tests.support.seed_trees import describe_tree


class LaneTests(LinkedSeed):
    """Three streams carry the whole tree once, as one seed; a cut lane resumes alone; abort stops all."""

    async def _both_done(self) -> None:
        await gatherResults([self.sending.when_done(), self.receiving.when_done()], consumeErrors=True)

    async def _lanes_flowing(self) -> None:
        await self._until(lambda: self.receiving.lanes == 3 and self.receiving.state == "running"
                          and self.receiving.progress.bytes_done > 4 * MB, "every lane to flow")

    @inline
    async def test_three_streams_carry_the_tree_whole(self):
        await self._start(streams=3)
        await self._both_done()
        self.assertEqual(describe_tree(self.target), describe_tree(self.source))
        self.assertEqual(self.link.connections, 3)
        self.assertEqual((self.sending.lanes, self.receiving.lanes), (3, 3))
        for transfer in (self.sending, self.receiving):
            progress = transfer.progress
            self.assertEqual(transfer.state, "succeeded")
            self.assertEqual((progress.bytes_done, progress.files_done), (progress.bytes_total, progress.files_total))
            self.assertEqual(progress.resumes, 0)
        # every lane carried a share: the three big files went on different lanes
        self.assertTrue(all(member.progress.bytes_done > 16 * MB for member in self.sending._members))
        await self._no_seed_threads()

    @inline
    async def test_three_streams_over_tls(self):
        await self._start(streams=3, tls=True)
        await self._both_done()
        self.assertEqual(describe_tree(self.target), describe_tree(self.source))
        self.assertEqual((self.sending.state, self.receiving.state), ("succeeded", "succeeded"))
        self.assertEqual(self.link.connections, 3)
        await self._no_seed_threads()

    @inline
    async def test_one_throttle_paces_the_lanes_together(self):
        rate = 8 * MB
        await self._start(streams=3, big_files=32 * MB, max_bytes_per_second=rate)
        await self._until(lambda: self.sending.progress.wire_bytes > 2 * MB, "the first bytes")
        # on the wire, as the throttle counts (file bytes would count a sparse file's hole too)
        before, started = self.sending.progress.wire_bytes, reactor.seconds()
        await deferLater(reactor, 1.5)
        moved = (self.sending.progress.wire_bytes - before) / (reactor.seconds() - started)
        self.assertLess(moved, 1.5 * rate)  # three lanes, each paced alone, would move about 3x
        self.sending.limit_rate(0)
        self.assertEqual(self.sending.max_bytes_per_second, 0)
        await self._both_done()
        self.assertEqual(describe_tree(self.target), describe_tree(self.source))

    @inline
    async def test_a_lane_cut_mid_seed_resumes_alone(self):
        await self._start(streams=3, big_files=32 * MB)
        await self._lanes_flowing()
        await threads.deferToThread(self.link.cut, 1)
        await self._both_done()
        self.assertEqual(describe_tree(self.target), describe_tree(self.source))
        self.assertEqual(self.link.connections, 4)  # three lanes, one of them twice
        for transfer in (self.sending, self.receiving):
            self.assertEqual((transfer.state, transfer.progress.resumes), ("succeeded", 1))
            self.assertEqual(sorted(member.progress.resumes for member in transfer._members), [0, 0, 1])
        await self._no_seed_threads()

    @inline
    async def test_abort_with_several_streams_leaves_nothing(self):
        await self._start(streams=3, big_files=32 * MB)
        await self._lanes_flowing()
        await gatherResults([self.sending.abort(), self.receiving.abort()])
        self.assertEqual((self.sending.state, self.receiving.state), ("aborted", "aborted"))
        self.assertEqual(os.listdir(self.target), [])
        await self._no_seed_threads()
        await deferLater(reactor, 0.3)  # and nothing reconnects or writes later
        self.assertEqual(os.listdir(self.target), [])
        self.assertEqual(self.server.connections.open, 0)

    @inline
    async def test_a_lane_that_fails_fails_the_seed_and_leaves_nothing(self):
        await self._start(streams=2, big_files=32 * MB, stall_timeout=1.5)
        await self._lanes_flowing_two()
        await threads.deferToThread(self.link.close)  # no lane can reconnect
        with self.assertRaises(TransferFailed):
            await self.receiving.when_done()
        with self.assertRaises(TransferFailed):
            await self.sending.when_done()
        self.assertEqual(os.listdir(self.target), [])
        await self._no_seed_threads()

    async def _lanes_flowing_two(self) -> None:
        await self._until(lambda: self.receiving.lanes == 2 and self.receiving.progress.bytes_done > 4 * MB,
                          "both lanes to flow")

    async def _a_lane_inside_a_range(self):
        """A receiving lane that verified part of a large file's range and has a few MB of it to go."""
        def inside(member):
            verified = member._writer.verified if member._writer is not None else None
            return (verified is not None and verified.point.in_file and verified.file.part is not None
                    and 0 < verified.point.offset < verified.file.length - 4 * MB)

        await self._until(lambda: self.receiving.lanes == 3 and any(map(inside, self.receiving._members)),
                          "a lane inside a range")
        return next(member for member in self.receiving._members if inside(member))

    @inline
    async def test_one_large_file_goes_over_every_lane(self):
        await self._start(streams=3, big_files=64 * MB, big_count=1)
        await self._both_done()
        self.assertEqual(describe_tree(self.target), describe_tree(self.source))
        self.assertEqual((self.sending.state, self.receiving.state), ("succeeded", "succeeded"))
        # Sent whole, its 64 MB would go on one lane, and the others would carry at most ibdata1's 8 MB
        # and the small files: each carried a share of it (in 9 MB ranges, three lanes' quarter shares).
        for transfer in (self.sending, self.receiving):
            shares = [member.progress.data_bytes for member in transfer._members]
            self.assertTrue(all(share > 16 * MB for share in shares), (transfer.role, shares))
        await self._no_seed_threads()

    @inline
    async def test_a_lane_cut_inside_a_range_resumes_from_its_checkpoint(self):
        await self._start(streams=3, big_files=64 * MB, big_count=1)
        lane = await self._a_lane_inside_a_range()
        verified = lane._writer.verified.point.nbytes
        await threads.deferToThread(self.link.cut_from, lane._connection.transport.getPeer().port)
        await self._both_done()
        self.assertEqual(describe_tree(self.target), describe_tree(self.source))
        self.assertEqual([member.progress.resumes for member in self.receiving._members if member is not lane], [0, 0])
        self.assertEqual((lane.state, lane.progress.resumes), ("succeeded", 1))
        # it continued inside the range, from its last checkpoint: at most a checkpoint's span and what
        # was on its way was received again, not the range (9 MB) nor the file
        self.assertGreaterEqual(lane._writer.verified.point.nbytes, verified)
        self.assertLess(lane.progress.resent_bytes, CHECKPOINT_BYTES + 2 * MB)
        await self._no_seed_threads()

    @inline
    async def test_abort_inside_ranges_leaves_nothing(self):
        await self._start(streams=3, big_files=64 * MB, big_count=1)
        await self._a_lane_inside_a_range()
        await gatherResults([self.sending.abort(), self.receiving.abort()])
        self.assertEqual((self.sending.state, self.receiving.state), ("aborted", "aborted"))
        await self._no_seed_threads()
        self.assertEqual(os.listdir(self.target), [])
        self.assertEqual(self.server.connections.open, 0)
        self.assertEqual(_descriptors_into(self.target), [])  # a large file's, kept by no lane

    @inline
    async def test_extra_lanes_are_refused(self):
        await self._start(streams=2, big_files=32 * MB)
        await self._lanes_flowing_two()
        other = send_tree(reactor, "127.0.0.1", self.server_port, "7", self.source, secret=SECRET, streams=3)
        with self.assertRaises(TransferFailed) as refused:
            await other.when_done()
        self.assertIn("names 3 streams for seed 7, whose first stream named 2", str(refused.exception))
        await self._both_done()
        self.assertEqual(describe_tree(self.target), describe_tree(self.source))


def _descriptors_into(directory: str) -> list[str]:
    """Where this process's open descriptors below ``directory`` lead."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:
            continue  # the listing's own, closed meanwhile
        if target.startswith(os.path.abspath(directory) + "/"):
            found.append(target)
    return found
