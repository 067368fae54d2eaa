"""Parallel streams: how a seed's files are split over its lanes, and the lanes seen as one transfer."""

import os
import random
import shutil
import threading
import tempfile

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from orchagent.seed import lanes
from orchagent.seed.lanes import Plan, ReceiveLanes, SharedStaging, SendLanes, lane_count, split
from orchagent.seed.protocol import TransferFailed
from orchagent.seed.reader import CHUNK_BYTES, WHOLE, count_tree
from orchagent.seed.transfer import Transfer


def sizes(seed: int, count: int) -> list[tuple[bytes, int]]:
    rng = random.Random(seed)
    return [(b"d%d/f%d" % (i % 7, i), rng.choice([0, 1, 4096, rng.randrange(1 << 30)])) for i in range(count)]


def loads(files: list[tuple[bytes, int]], count: int) -> list[int]:
    """The bytes each of ``count`` lanes carries."""
    carried = [0] * count
    sized = dict(files)
    for path, pieces in split(files, count).items():
        for part, lane in pieces:
            carried[lane] += max(sized[path], 0) if part is None else part[1]
    return carried


class SplitTests(SynchronousTestCase):
    def test_every_byte_of_every_file_is_in_exactly_one_piece(self):
        files = sizes(1, 500) + [(b"huge", 500 << 30)]
        for count in (2, 3, 16):
            assignment = split(files, count)
            cut = lanes.range_bytes(sum(size for _, size in files), count)
            self.assertEqual(sorted(assignment), sorted(path for path, _ in files))
            for path, size in files:
                pieces = assignment[path]
                if size <= cut:
                    self.assertEqual(len(pieces), 1)
                    self.assertIsNone(pieces[0][0])
                    continue
                covered = 0
                for (offset, length), lane in pieces:  # in offset order, no gap, no overlap
                    self.assertEqual(offset, covered)
                    self.assertTrue(0 < length <= cut)
                    self.assertEqual(offset % CHUNK_BYTES, 0)  # whole reader blocks
                    covered += length
                self.assertEqual(covered, size)
            self.assertEqual({lane for pieces in assignment.values() for _, lane in pieces}, set(range(count)))

    def test_the_same_tree_splits_the_same_way_whatever_order_it_is_listed_in(self):
        files = sizes(2, 300) + [(b"huge", 80 << 30)]
        shuffled = files[:]
        random.Random(3).shuffle(shuffled)
        self.assertEqual(split(files, 3), split(shuffled, 3))

    def test_lanes_carry_as_many_bytes_within_one_range(self):
        for seed in range(5):
            files = sizes(seed, 200)
            for count in (2, 3, 4):
                carried = loads(files, count)
                self.assertLessEqual(max(carried) - min(carried), lanes.range_bytes(sum(carried), count))

    def test_a_single_huge_file_is_spread_over_every_lane(self):
        for size, count in ((500 << 30, 3), (64 << 20, 3), (1 << 30, 2), ((3 << 30) + 12345, 16)):
            files = [(b"ib_huge.ibd", size), (b"small", 4096), (b"link", -1)]
            carried = loads(files, count)
            cut = lanes.range_bytes(size + 4096, count)
            self.assertEqual(sum(carried), size + 4096)
            self.assertLessEqual(max(carried) - min(carried), cut)
            self.assertTrue(all(carried), carried)

    def test_ranges_are_a_quarter_of_a_lanes_share_and_never_small(self):
        self.assertEqual(lanes.range_bytes(1 << 40, 2), 128 << 30)
        self.assertEqual(lanes.range_bytes(64 << 20, 3), lanes.MIN_RANGE_BYTES)
        self.assertEqual(lanes.range_bytes((1 << 30) + 1, 2) % CHUNK_BYTES, 0)

    def test_empty_files_and_symlinks_are_spread_too(self):
        files = [(b"empty%d" % i, 0) for i in range(8)] + [(b"link%d" % i, -1) for i in range(4)]
        carried = [lane for pieces in split(files, 4).values() for _, lane in pieces]
        self.assertEqual(sorted(carried.count(lane) for lane in range(4)), [3, 3, 3, 3])

    def test_one_lane_carries_everything_whole(self):
        files = sizes(4, 50) + [(b"huge", 500 << 30)]
        self.assertEqual({pieces for pieces in map(tuple, split(files, 1).values())}, {((None, 0),)})

    def test_the_agent_chooses_when_zero_and_a_hot_seed_has_one(self):
        self.assertEqual(lane_count(0), lanes.AUTO_LANES)
        self.assertEqual(lane_count(3), 3)
        self.assertEqual(lane_count(3, hot=True), 1)


class PlanTests(SynchronousTestCase):
    def setUp(self):
        self.root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.root)
        for i in range(30):
            os.makedirs(os.path.join(self.root, f"db{i % 4}"), exist_ok=True)
            with open(os.path.join(self.root, f"db{i % 4}", f"t{i}.ibd"), "wb") as f:
                f.write(b"x" * (i * 1000))
        with open(os.path.join(self.root, "db1", "huge.ibd"), "wb") as f:
            f.truncate(100 << 20)  # sparse: cut into ranges all the same
        os.symlink("db0", os.path.join(self.root, "link"))

    def test_the_lanes_totals_add_up_to_the_tree(self):
        plan = Plan(self.root, 3)
        parts = [count_tree(self.root, plan.carries(lane)) for lane in range(3)]
        self.assertEqual((sum(p[0] for p in parts), sum(p[1] for p in parts)), count_tree(self.root))
        self.assertTrue(all(nbytes > 25 << 20 for _, nbytes in parts))  # the huge file's ranges, on every lane
        self.assertEqual(sum(len(plan.carries(lane)(b"db1/huge.ibd")) for lane in range(3)), 12)  # of 9 MB

    def test_an_entry_made_after_the_split_goes_whole_on_lane_0(self):
        plan = Plan(self.root, 2)
        plan.carries(1)(b"db0/t0.ibd")  # splits now
        self.assertEqual(plan.carries(0)(b"db0/new.ibd"), WHOLE)
        self.assertEqual(plan.carries(1)(b"db0/new.ibd"), ())


class Member(Transfer):
    """A lane's transfer, ended by hand."""

    def __init__(self, clock):
        super().__init__(clock, "7", "send", 30)

    def finish(self, error=None):
        self.conclude(error)


class LanesAsOneTransferTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.members = []
        self.lanes = SendLanes("7", "/src", 3, self._start)

    def _start(self, lane):
        member = Member(self.clock)
        member.progress.bytes_done, member.progress.files_done = 100 * (lane + 1), lane + 1
        member.progress.files_total, member.progress.bytes_total = 10, 1000
        self.members.append(member)
        return member

    def test_progress_is_summed(self):
        progress = self.lanes.progress
        self.assertEqual((progress.bytes_done, progress.files_done), (600, 6))
        self.assertEqual((progress.files_total, progress.bytes_total), (30, 3000))

    def test_succeeds_only_when_every_lane_did(self):
        done = self.lanes.when_done()
        self.members[0].finish()
        self.members[1].finish()
        self.assertNoResult(done)
        self.assertEqual(self.lanes.state, "waiting")
        self.members[2].finish()
        self.successResultOf(done)
        self.assertEqual(self.lanes.state, "succeeded")

    def test_the_first_lane_to_fail_fails_them_all(self):
        done = self.lanes.when_done()
        self.members[1].finish(TransferFailed("lane 1 broke"))
        self.failureResultOf(done, TransferFailed)
        self.assertEqual(str(self.lanes.error), "lane 1 broke")
        self.assertTrue(all(member.done for member in self.members))
        self.assertEqual(self.lanes.state, "failed")

    def test_abort_stops_every_lane(self):
        self.successResultOf(self.lanes.abort())
        self.assertEqual([member.state for member in self.members], ["aborted"] * 3)
        self.assertEqual(self.lanes.state, "aborted")


class ReceiveLanesTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.made = []
        self.shared = SharedStaging("/nonexistent", "7")
        self.lanes = ReceiveLanes("7", "/nonexistent", self.shared, self._make(), self._make)

    def _make(self):
        member = Member(self.clock)
        self.made.append(member)
        return member

    def test_the_first_lane_to_authenticate_fixes_the_count(self):
        second = self.lanes.lane(1, 3)
        self.assertIs(second, self.made[0])
        self.assertEqual((len(self.made), self.shared.lanes), (3, 3))
        self.assertIs(self.lanes.lane(0, 3), self.made[1])
        self.assertIs(self.lanes.lane(1, 3), second)
        self.assertIn("whose first stream named 3", self.lanes.lane(0, 2))
        self.assertEqual(len(self.made), 3)

    def test_one_lane_is_the_armed_receive_itself(self):
        self.assertIs(self.lanes.lane(0, 1), self.made[0])
        self.assertFalse(self.shared.shared)


class SharedStagingTests(SynchronousTestCase):
    """The last lane to finish moves the tree in, once, with every lane's directories; the others wait."""

    def setUp(self):
        self.shared = SharedStaging("/nonexistent", "7")
        self.shared.lanes = 2
        self.moved = []

    def _finish_in_thread(self, directories):
        outcome = []

        def run():
            try:
                self.shared.finish(directories, self.moved.append)
                outcome.append("ok")
            except TransferFailed as e:
                outcome.append(str(e))

        thread = threading.Thread(target=run)
        thread.start()
        return thread, outcome

    def test_the_last_lane_moves_in_and_the_first_waits_for_it(self):
        thread, outcome = self._finish_in_thread({b"": (0, 0), b"a": (0o755, 1)})
        thread.join(0.2)
        self.assertTrue(thread.is_alive())  # waiting for the other lane
        self.assertEqual(self.moved, [])
        self.shared.finish({b"": (0, 0), b"b": (0o700, 2)}, self.moved.append)
        thread.join(5)
        self.assertEqual(outcome, ["ok"])
        self.assertEqual(self.moved, [{b"": (0, 0), b"a": (0o755, 1), b"b": (0o700, 2)}])

    def test_a_failed_receive_wakes_a_waiting_lane_with_an_error(self):
        thread, outcome = self._finish_in_thread({})
        self.shared.cancel()
        thread.join(5)
        self.assertIn("another stream of the seed failed", outcome[0])
        self.assertEqual(self.moved, [])

    def test_a_failed_move_fails_the_waiting_lane_too(self):
        thread, outcome = self._finish_in_thread({})

        def broken(_):
            raise OSError("disk full")

        self.assertRaises(OSError, self.shared.finish, {}, broken)
        thread.join(5)
        self.assertIn("another stream of the seed failed", outcome[0])
