"""mysql-start after a hot seed sets up replication once, from the seed's coordinates; never after a snapshot seed."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from orchagent.config import Config
from orchagent.host.hotbackup import BinlogPosition
from orchagent.host.mysql import MySQL
from orchagent.host.replication import ReplicationReport, ReplicationSetup
from tests.support.fake_runner import FakeRunner
from tests.unit.test_seed_manager import SeedManagerTestCase


class FakeReplication:
    def __init__(self, report=None, error=None):
        self.calls = []
        self.report = report or ReplicationReport("replicating from repl@db1:3306 at GTID 0-1-3", True)
        self.error = error

    configure = ReplicationSetup.configure  # the real report of what was configured, over this start

    async def start(self, host, port, position):
        self.calls.append((host, port, position))
        if self.error:
            raise self.error
        return self.report


class StartReplicationTests(SeedManagerTestCase):
    """The seed manager's after-start step, on records as a hot seed's receive leaves them."""

    def received(self, replication, seed_id=5, coordinates=True, wanted=True):
        manager = self.manager(replication, receive_seed_data_command="my-receive", seed_start_replication=wanted)
        self.settle(manager.receive(seed_id))
        self.runner.started[-1].result.callback(None)
        record = manager.record(seed_id)
        self.assertTrue(record.succeeded)
        if coordinates:  # what the stream carries (the next step): the source's port and the backup's binlog info
            record.source_port, record.binlog_file, record.binlog_position, record.gtid = (
                3307, "mysql-bin.000001", 880, "0-1-3")
        self.settle(manager.check_post_copy("db1.example.com"))
        return manager

    def test_hot_seed_configures_replication_once(self):
        replication = FakeReplication()
        manager = self.received(replication)
        self.settle(manager.start_replication())
        self.assertEqual(replication.calls,
                         [("db1.example.com", 3307, BinlogPosition("mysql-bin.000001", 880, "0-1-3"))])
        self.assertEqual(manager.record(5).replication, "replicating from repl@db1:3306 at GTID 0-1-3")
        self.assertEqual(self.stored(5)["replication"], manager.record(5).replication)
        self.settle(manager.start_replication())  # a later restart of MySQL must not rewind it
        self.assertEqual(len(replication.calls), 1)

    def test_snapshot_seed_never_configures_replication_and_says_so(self):
        replication = FakeReplication()
        manager = self.received(replication, coordinates=False)
        self.settle(manager.start_replication())
        self.assertEqual(replication.calls, [])
        self.assertIn("carried no binlog coordinates", manager.record(5).replication)

    def test_failure_is_reported_and_the_seed_stays_successful(self):
        replication = FakeReplication(ReplicationReport("replicating from repl@db1:3307 at GTID 0-1-3", False,
                                                        "IO error 1045: Access denied"))
        manager = self.received(replication)
        self.settle(manager.start_replication())
        record = manager.record(5)
        self.assertTrue(record.succeeded)
        self.assertIn("replication did not start: IO error 1045: Access denied", record.replication)

    def test_errors_become_the_report(self):
        manager = self.received(FakeReplication(error=RuntimeError("SeedReplicationPasswordFile has mode 0644")))
        self.settle(manager.start_replication())
        self.assertEqual(manager.record(5).replication, "replication not configured: SeedReplicationPasswordFile "
                                                        "has mode 0644")

    def test_off_without_seed_start_replication(self):
        replication = FakeReplication()
        manager = self.received(replication, wanted=False)
        self.settle(manager.start_replication())
        self.assertEqual((replication.calls, manager.record(5).replication), ([], ""))


class AfterStartTests(SynchronousTestCase):
    """MySQL.start runs the after-start steps once the server started; a failing step fails nothing."""

    def test_steps_run_after_the_start_command(self):
        runner = FakeRunner()
        mysql = MySQL(Config(mysql_service_start_command="start-it"), runner, Clock())
        seen = []

        async def step():
            seen.append(runner.names())

        async def broken():
            raise RuntimeError("broken step")

        mysql.after_start(broken)
        mysql.after_start(step)
        self.successResultOf(Deferred.fromCoroutine(mysql.start()))
        self.assertEqual(seen, [["MySQLServiceStartCommand"]])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_no_step_when_the_start_fails(self):
        mysql = MySQL(Config(mysql_service_start_command="start-it"), FakeRunner(exit_codes={
            "MySQLServiceStartCommand": 1}), Clock())
        seen = []

        async def step():
            seen.append(True)

        mysql.after_start(step)
        self.failureResultOf(Deferred.fromCoroutine(mysql.start()))
        self.assertEqual(seen, [])
