"""DiskUsage: one du walk serves every concurrent caller, results live a few seconds, and commands
that change the disk invalidate them."""

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from orchagent.commands import CommandFailed, CommandResult
from orchagent.host.disk import DiskUsage
from tests.support.fake_runner import FakeRunner, command_result


def result(stdout: bytes, exit_code: int = 0) -> CommandResult:
    return command_result("du", exit_code=exit_code, stdout=stdout, stderr=b"du: cannot access")


class DiskUsageTests(SynchronousTestCase):
    """One du walk serves all concurrent callers, results live a few seconds, and disk changes invalidate them."""

    def setUp(self):
        self.runner = FakeRunner(held=("du", "df"))
        self.clock = Clock()
        self.disk = DiskUsage(self.runner, self.clock)

    def usage(self, path="/data"):
        return ensureDeferred(self.disk.usage(path))

    def test_a_followed_path_answers_from_its_counter_without_walking(self):
        """While a seed receives into the datadir, mysql-du is the transfer's own exact count."""
        cached = self.usage()
        self.runner.started[0].result.callback(result(b"4096\t/data\n"))
        self.assertEqual(self.successResultOf(cached), 4096)
        arrived = [0]
        unfollow = self.disk.follow("/data", lambda: arrived[0])
        arrived[0] = 90 * 1024 * 1024
        self.assertEqual(self.successResultOf(self.usage()), 90 * 1024 * 1024)
        self.assertEqual(len(self.runner.started), 1)  # no walk while followed
        unfollow()  # the receive ended: walk again, not the value cached before it
        after = self.usage()
        self.assertEqual(len(self.runner.started), 2)
        self.runner.started[1].result.callback(result(b"94371840\t/data\n"))
        self.assertEqual(self.successResultOf(after), 94371840)

    def test_concurrent_callers_share_one_walk(self):
        calls = [self.usage() for _ in range(5)]
        self.assertEqual(len(self.runner.started), 1)
        self.assertEqual(self.runner.calls[0].argv, ("du", "-sb", "/data"))
        self.runner.started[0].result.callback(result(b"4096\t/data\n"))
        self.assertEqual([self.successResultOf(d) for d in calls], [4096] * 5)

    def test_cached_for_a_few_seconds_then_refreshed_without_waiting(self):
        first = self.usage()
        self.runner.started[0].result.callback(result(b"10\t/data\n"))
        self.assertEqual(self.successResultOf(first), 10)
        self.clock.advance(4)
        self.assertEqual(self.successResultOf(self.usage()), 10)
        self.assertEqual(len(self.runner.started), 1)
        self.clock.advance(2)
        self.assertEqual(self.successResultOf(self.usage()), 10)  # at once, while a new walk starts
        self.assertEqual(len(self.runner.started), 2)
        self.runner.started[1].result.callback(result(b"20\t/data\n"))
        self.assertEqual(self.successResultOf(self.usage()), 20)

    def test_a_failed_refresh_keeps_answering_the_last_value_until_too_old(self):
        first = self.usage()
        self.runner.started[0].result.callback(result(b"10\t/data\n"))
        self.successResultOf(first)
        self.clock.advance(30)
        self.assertEqual(self.successResultOf(self.usage()), 10)
        self.runner.started[1].result.callback(result(b"", exit_code=1))
        self.clock.advance(31)
        waiting = self.usage()
        self.assertNoResult(waiting)
        self.runner.started[2].result.callback(result(b"", exit_code=1))
        self.failureResultOf(waiting, CommandFailed)

    def test_invalidate_during_a_walk_answers_but_does_not_keep(self):
        first = self.usage()
        self.disk.invalidate()
        self.runner.started[0].result.callback(result(b"10\t/data\n"))
        self.assertEqual(self.successResultOf(first), 10)
        self.usage()
        self.assertEqual(len(self.runner.started), 2)

    def test_failures_reach_every_caller_and_are_not_cached(self):
        calls = [self.usage() for _ in range(3)]
        self.runner.started[0].result.callback(result(b"", exit_code=1))
        for d in calls:
            self.failureResultOf(d, CommandFailed)
        self.usage()
        self.assertEqual(len(self.runner.started), 2)

    def test_a_total_despite_vanished_files_counts(self):
        d = self.usage()
        self.runner.started[0].result.callback(result(b"77\t/data\n", exit_code=1))
        self.assertEqual(self.successResultOf(d), 77)

    def test_paths_and_commands_are_cached_separately(self):
        self.usage("/a")
        self.usage("/b")
        ensureDeferred(self.disk.available("/a"))
        self.assertEqual([call.argv for call in self.runner.calls],
                         [("du", "-sb", "/a"), ("du", "-sb", "/b"), ("df", "-PT", "-B", "1", "/a")])
