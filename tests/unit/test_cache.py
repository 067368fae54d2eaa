"""ShortCache: one computation per key in flight, fresh then stale values, invalidation."""

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from orchagent.cache import ShortCache
from orchagent.config import Config
from orchagent.host.mysql import MySQL
from tests.support.deferreds import Settling
from tests.support.fake_runner import FakeRunner
from tests.support.mysql_fakes import InlineThreadsReactor


class ShortCacheTests(SynchronousTestCase):
    """ShortCache shares one computation among callers, answers stale while refreshing and forgets on invalidate."""

    def setUp(self):
        self.clock = Clock()
        self.cache = ShortCache(self.clock, fresh_seconds=5, stale_seconds=60)
        self.pending = []

    def compute(self):
        d = Deferred()
        self.pending.append(d)

        async def wait():
            return await d
        return wait()

    def get(self):
        return Deferred.fromCoroutine(self.cache.get("k", self.compute))

    def test_concurrent_callers_share_one_computation(self):
        first, second = self.get(), self.get()
        self.assertEqual(len(self.pending), 1)
        self.pending[0].callback(42)
        self.assertEqual((self.successResultOf(first), self.successResultOf(second)), (42, 42))

    def test_fresh_value_then_stale_answer_while_refreshing(self):
        self.get()
        self.pending[0].callback(1)
        self.clock.advance(4)
        self.assertEqual(self.successResultOf(self.get()), 1)
        self.assertEqual(len(self.pending), 1)  # still fresh: nothing recomputed
        self.clock.advance(2)
        self.assertEqual(self.successResultOf(self.get()), 1)  # stale: answered at once...
        self.assertEqual(len(self.pending), 2)  # ...while a refresh runs
        self.pending[1].callback(2)
        self.assertEqual(self.successResultOf(self.get()), 2)

    def test_too_old_waits_and_failures_reach_every_caller(self):
        self.get()
        self.pending[0].callback(1)
        self.clock.advance(61)
        waiting = self.get()
        self.assertNoResult(waiting)
        self.pending[1].errback(RuntimeError("du failed"))
        self.failureResultOf(waiting, RuntimeError)

    def test_invalidate_forgets_and_ignores_computations_in_flight(self):
        in_flight = self.get()
        self.cache.invalidate()
        self.pending[0].callback("old")
        self.assertEqual(self.successResultOf(in_flight), "old")
        after = self.get()
        self.assertEqual(len(self.pending), 2)
        self.pending[1].callback("new")
        self.assertEqual(self.successResultOf(after), "new")


class MySQLFactsTests(Settling, SynchronousTestCase):
    """The datadir and port are asked of their commands once, and again after a service command."""

    def test_poll_facts_run_their_commands_once_until_service_changes(self):
        runner = FakeRunner({"MySQLDatadirCommand": b"/var/lib/mysql\n", "MySQLPortCommand": b"3306\n"})
        mysql = MySQL(Config(mysql_datadir_command="d", mysql_port_command="p", mysql_service_stop_command="s"),
                      runner, InlineThreadsReactor())

        def facts():
            return [self.settle(c) for c in (mysql.datadir(), mysql.port())]

        self.assertEqual(facts() + facts(), ["/var/lib/mysql", 3306] * 2)
        self.assertEqual(runner.names(), ["MySQLDatadirCommand", "MySQLPortCommand"])
        self.settle(mysql.stop())
        facts()
        self.assertEqual(runner.names().count("MySQLDatadirCommand"), 2)
