"""Seed bookkeeping: persistence, restart, abort, the post-copy guard and command-mode stalls.

The data movers are stand-ins here (the real ones are exercised end to end in
tests/integration/test_seed_*.py); what is under test is what the manager answers and does.
"""

import json
import os

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from orchagent.config import Config
from orchagent.errors import AgentError, Busy, Conflict, InvalidInput, NotFound
from orchagent.host.snapshots import Mount
from orchagent.seed.manager import SeedManager
from orchagent.seed.records import Holder, SeedRecord, SeedStore
from orchagent.seed import lanes
from orchagent.seed.outcome import Progress
from testbed.pki import CertificateAuthority
from tests.support.deferreds import Settling
from tests.support.fake_runner import FakeRunner
from tests.support.storage import StubMySQL


class FakeSnapshots:
    def __init__(self, mount):
        self.mount = mount

    async def current_mount(self):
        return self.mount


class FakeEraser:
    """Counts the emptyings; ``pending`` (a Deferred) holds the next one until it fires."""

    def __init__(self):
        self.emptied = 0
        self.paths = []
        self.pending = None

    async def empty(self, expected=None, *, after_failed_seed=False):
        self.paths.append(expected)
        if self.pending is not None:
            pending, self.pending = self.pending, None
            await pending
        self.emptied += after_failed_seed  # only the clears of a failed seed's copy count
        return []


class FakeDisk:
    def __init__(self):
        self.size = 0
        self.followed = {}

    async def usage(self, path):
        return self.size

    def follow(self, path, counter):
        self.followed[path] = counter
        return lambda: self.followed.pop(path)

    def invalidate(self):
        pass


class FakeTransfer:
    """``finish(error=None)`` ends it; ``when_done`` Deferreds fire then, as the engine's do."""

    def __init__(self):
        self.progress = Progress(bytes_done=10, bytes_total=100, files_done=1, files_total=4)
        self.waiters = []
        self.aborted = False
        self.rates = []
        self.lanes = 1

    def limit_rate(self, max_bytes_per_second):
        self.rates.append(max_bytes_per_second)

    def when_done(self):
        self.waiters.append(Deferred())
        return self.waiters[-1]

    def finish(self, error=None):
        for d in self.waiters:
            if not d.called:
                d.errback(error) if error else d.callback(None)

    def abort(self):
        self.aborted = True
        self.finish(RuntimeError("aborted"))
        return succeed(None)


class PostCopyMySQL(StubMySQL):
    """Remembers each PostCopyCommand it was asked to run."""

    def __init__(self, datadir):
        super().__init__(datadir)
        self.post_copies = []

    async def post_copy(self, source_host):
        self.post_copies.append(source_host)


class SeedManagerTestCase(Settling, SynchronousTestCase):
    """A seed manager on a fake clock with stand-in data movers, runner, eraser and disk."""

    def setUp(self):
        self.state = self.mktemp()
        self.datadir = os.path.realpath(self.mktemp())
        os.makedirs(self.datadir)
        self.clock = Clock()
        self.runner = FakeRunner()
        self.eraser = FakeEraser()
        self.disk = FakeDisk()
        self.mysql = StubMySQL(self.datadir)
        self.snapshots = FakeSnapshots(Mount(path="/mnt/snap", is_mounted=True, mysql_data_path="/mnt/snap/mysql"))
        self.transfers = []

    def manager(self, replication=None, **config):
        def send(reactor, host, port, seed_id, source, **kwargs):
            self.transfers.append((host, port, seed_id, source, kwargs))
            return self.transfer

        self.transfer = FakeTransfer()
        settings = dict(state_directory=self.state, seed_transfer_secret="s3cret", seed_stall_timeout_seconds=30)
        settings.update(config)
        manager = SeedManager(config=Config(**settings), reactor=self.clock, mysql=self.mysql,
                              snapshots=self.snapshots, eraser=self.eraser, disk=self.disk, runner=self.runner,
                              store=SeedStore(self.state), defer_to_thread=lambda f, *a: succeed(f(*a)),
                              send=send, replication=replication)
        manager.startService()
        self.addCleanup(lambda: manager.running and manager.stopService())
        return manager

    def stored(self, seed_id):
        with open(os.path.join(self.state, "seeds", f"{seed_id}.json")) as f:
            return json.load(f)



class SeedManagerTests(SeedManagerTestCase):
    """What the manager answers and does for one seed at a time."""

    def test_built_in_send_uses_the_mounted_snapshot_and_reports_success(self):
        manager = self.manager()
        self.settle(manager.send("db2.example.com", 7))
        host, port, seed_id, source, kwargs = self.transfers[0]
        self.assertEqual((host, port, seed_id, source), ("db2.example.com", 21234, "7", "/mnt/snap/mysql"))
        self.assertEqual(kwargs["secret"], b"s3cret")
        record = manager.record(7)
        self.assertEqual((record.completed, record.bytes_done, record.files_total), (False, 10, 4))
        self.transfer.finish()
        self.assertEqual((manager.record(7).completed, manager.record(7).succeeded), (True, True))
        self.assertEqual(self.stored(7)["state"], "succeeded")

    def test_the_send_compresses_as_configured_and_records_the_wire_bytes(self):
        manager = self.manager(seed_compression="none")
        self.settle(manager.send("db2.example.com", 7))
        self.assertEqual(self.transfers[0][4]["compression"], "none")
        self.transfer.progress.wire_bytes, self.transfer.progress.data_bytes = 40, 90
        self.transfer.finish()
        self.assertEqual((manager.record(7).wire_bytes, manager.record(7).data_bytes), (40, 90))
        self.assertEqual((self.stored(7)["wire_bytes"], self.stored(7)["data_bytes"]), (40, 90))

    def test_the_send_uses_the_configured_streams_and_records_them(self):
        manager = self.manager(seed_parallel_streams=3)
        self.settle(manager.send("db2.example.com", 7))
        self.assertEqual(self.transfers[0][4]["streams"], 3)
        self.transfer.lanes = 3
        self.transfer.finish()
        self.assertEqual((manager.record(7).streams, self.stored(7)["streams"]), (3, 3))

    def test_zero_streams_lets_the_agent_choose(self):
        manager = self.manager()
        self.settle(manager.send("db2.example.com", 7))
        self.assertEqual(self.transfers[0][4]["streams"], lanes.AUTO_LANES)

    def test_resumes_after_dropped_connections_are_recorded(self):
        manager = self.manager()
        self.settle(manager.send("db2.example.com", 7))
        self.transfer.progress.resumes, self.transfer.progress.resent_bytes = 2, 4096
        self.transfer.finish()
        self.assertEqual((manager.record(7).resumes, manager.record(7).resent_bytes), (2, 4096))
        self.assertEqual((self.stored(7)["resumes"], self.stored(7)["resent_bytes"]), (2, 4096))

    def test_built_in_transfer_needs_a_secret_or_sender_certificates(self):
        manager = self.manager(seed_transfer_secret="")
        error = self.fail_with(manager.send("db2", 9), AgentError)
        self.assertIn("needs SeedTransferSecret", str(error))
        self.assertIn("SeedTransferValidOUs", str(error))
        self.assertEqual(self.transfers, [])
        self.assertRaises(NotFound, manager.record, 9)

    def test_agents_with_certificates_need_no_secret(self):
        ca = CertificateAuthority(self.mktemp())
        issued = ca.issue("db1", ou="mysql-agents")
        manager = self.manager(seed_transfer_secret="", seed_transfer_valid_ous=("mysql-agents",), use_ssl=True,
                               ssl_cert_file=issued.cert, ssl_private_key_file=issued.key, ssl_ca_file=ca.cert)
        self.settle(manager.send("db2", 9))
        kwargs = self.transfers[0][4]
        self.assertEqual(kwargs["secret"], b"")
        self.assertIsNotNone(kwargs["tls"])  # the agent's certificate goes with it

    def test_a_hot_backup_volume_is_never_sent_by_a_configured_command(self):
        self.snapshots.mount = Mount(path="/mnt/snap", is_mounted=True, mysql_data_path=self.datadir, virtual=True)
        manager = self.manager(send_seed_data_command="tar -c -C")
        error = self.fail_with(manager.send("db2", 8), Conflict)
        self.assertIn("unset SendSeedDataCommand", str(error))
        self.assertEqual((self.runner.calls, self.transfers), ([], []))
        self.assertRaises(NotFound, manager.record, 8)

    def test_send_without_snapshot_needs_mysql_stopped(self):
        self.snapshots.mount = Mount(path="/mnt/snap")
        self.mysql.running = True
        manager = self.manager()
        error = self.fail_with(manager.send("db2", 8), Conflict)
        self.assertIn("no snapshot is mounted", str(error))
        self.mysql.running = False
        self.settle(manager.send("db2", 8))
        self.assertEqual(self.transfers[0][3], self.datadir)

    def test_throttle_changes_a_running_built_in_send_and_is_kept_in_its_record(self):
        manager = self.manager(seed_max_bytes_per_second=4_000_000)
        self.settle(manager.send("db2", 7))
        self.assertEqual(self.transfers[0][4]["max_bytes_per_second"], 4_000_000)
        self.assertEqual(manager.record(7).max_bytes_per_second, 4_000_000)
        self.settle(manager.throttle(7, 16_000_000))
        self.settle(manager.throttle(7, 0))
        self.assertEqual(self.transfer.rates, [16_000_000, 0])
        self.assertEqual(self.stored(7)["max_bytes_per_second"], 0)

    def test_throttle_refuses_unknown_ended_receiving_command_mode_and_too_slow(self):
        manager = self.manager(receive_seed_data_command="my-receive")
        self.fail_with(manager.throttle(5, 1_000_000), NotFound)
        self.settle(manager.receive(6))
        self.assertIn("the source paces", str(self.fail_with(manager.throttle(6, 1_000_000), Conflict)))
        self.settle(manager.send("db2", 7))
        error = self.fail_with(manager.throttle(7, 1000), InvalidInput)
        self.assertIn("SeedStallTimeoutSeconds", str(error))
        self.transfer.finish()
        self.assertIn("succeeded", str(self.fail_with(manager.throttle(7, 1_000_000), Conflict)))
        self.assertEqual(self.transfer.rates, [])
        command = self.manager(send_seed_data_command="my-send")
        self.settle(command.send("db2", 8))
        self.assertIn("command-mode", str(self.fail_with(command.throttle(8, 1_000_000), Conflict)))
        self.assertIsNone(command.record(8).max_bytes_per_second)

    def test_record_times_come_from_the_reactor_clock(self):
        """One clock: started, first byte and end are the injected reactor's times."""
        self.clock.advance(1000)
        manager = self.manager()
        self.settle(manager.send("db2", 6))
        manager.record(6)  # a poll sees the first bytes
        self.clock.advance(5)
        self.transfer.finish()
        record = manager.record(6)
        self.assertEqual((record.started_at, record.data_started_at, record.ended_at), (1000, 1000, 1005))
        self.assertEqual(record.rate(manager.now()), 2)  # 10 bytes in 5 s

    def test_rate_counts_from_when_the_peers_met_even_if_no_poll_saw_the_seed_run(self):
        """A seed shorter than the sampling tick still gets its true rate, not bytes over an instant."""
        self.clock.advance(1000)
        manager = self.manager()
        self.settle(manager.send("db2", 8))
        self.transfer.progress.started = 1001.0  # the receiver authenticated a second later
        self.clock.advance(5)
        self.transfer.finish()
        record = manager.record(8)
        self.assertEqual((record.data_started_at, record.ended_at), (1001.0, 1005))
        self.assertEqual(record.rate(manager.now()), 2)  # 10 bytes in 4 s

    def test_receive_refused_while_mysql_runs(self):
        self.mysql.running = True
        error = self.fail_with(self.manager(receive_seed_data_command="recv").receive(3), Conflict)
        self.assertIn("MySQL is running", str(error))
        self.assertEqual(self.runner.started, [])

    def test_receive_refuses_what_delete_mysql_datadir_refuses(self):
        for datadir, rule in [("/etc", "top-level directory"), ("/usr/sbin", "system tree"),
                              ("/var/log", "system tree")]:
            self.mysql.data_directory = datadir
            error = self.fail_with(self.manager(receive_seed_data_command="recv").receive(3), Conflict)
            self.assertIn(f"(rule: {rule})", str(error))
        self.mysql.data_directory = self.datadir
        open(os.path.join(self.datadir, "notes.txt"), "w").close()
        error = self.fail_with(self.manager().receive(4), Conflict)
        self.assertIn("(rule: a datadir or empty)", str(error))
        self.assertEqual((self.runner.started, self.transfers), ([], []))

    def test_command_mode_passes_arguments_as_argv_without_a_wall_clock_timeout(self):
        manager = self.manager(receive_seed_data_command="my-receive", seed_transfer_port=4444)
        self.settle(manager.receive(5))
        self.assertEqual([(call.name, call.argv[2], call.args, call.options) for call in self.runner.calls],
                         [("ReceiveSeedDataCommand", "my-receive", (self.datadir, "4444"), {"timeout": None})])
        self.runner.started[0].result.callback(None)
        self.assertTrue(manager.record(5).succeeded)

    def test_abort_kills_then_reads_completed_not_succeeded_and_clears_the_datadir(self):
        manager = self.manager(receive_seed_data_command="my-receive")
        self.settle(manager.receive(9))
        self.settle(manager.abort(9))
        self.assertTrue(self.runner.started[0].terminated)
        record = manager.record(9)
        self.assertEqual((record.completed, record.succeeded, record.state), (True, False, "aborted"))
        self.assertEqual(self.eraser.emptied, 1)

    def test_records_newest_first(self):
        manager = self.manager(receive_seed_data_command="my-receive", send_seed_data_command="my-send")
        for seed_id in (7, 5, 6):
            self.clock.advance(10)
            self.settle(manager.send("db2", seed_id))
        self.assertEqual([record.seed_id for record in manager.records()], [6, 5, 7])
        self.assertEqual([record.seed_id for record in manager.records(limit=1)], [6])

    def test_send_command_is_killed_after_silence_only_when_configured(self):
        self.settle(self.manager(send_seed_data_command="my-send").send("db2", 1))
        watched = self.manager(send_seed_data_command="my-send", send_seed_data_idle_timeout_seconds=60)
        self.settle(watched.send("db2", 2))
        limits = [(call.name, call.options["idle_timeout"], call.options["timeout"]) for call in self.runner.calls]
        self.assertEqual(limits, [("SendSeedDataCommand", None, None), ("SendSeedDataCommand", 60, None)])

    def test_abort_after_success_cannot_be_flipped_back(self):
        manager = self.manager()
        self.settle(manager.send("db2", 4))
        self.transfer.finish()
        self.settle(manager.abort(4))
        self.assertEqual((manager.record(4).completed, manager.record(4).succeeded), (True, False))

    def test_failed_receive_is_cleared_and_blocks_post_copy(self):
        manager = self.manager(receive_seed_data_command="my-receive")
        self.settle(manager.check_post_copy())  # no seed yet: a manual post-copy is allowed
        self.settle(manager.receive(11))
        self.fail_with(manager.check_post_copy(), Conflict)  # still running
        self.runner.started[0].result.errback(RuntimeError("ReceiveSeedDataCommand failed with exit status 1"))
        record = manager.record(11)
        self.assertEqual((record.state, record.error), ("failed", "ReceiveSeedDataCommand failed with exit status 1"))
        self.assertEqual((self.eraser.emptied, self.eraser.paths), (1, [self.datadir]))
        self.assertIn("seed 11 is failed", str(self.fail_with(manager.check_post_copy(), Conflict)))

    def test_post_copy_runs_the_command_only_when_the_check_agrees(self):
        self.mysql = PostCopyMySQL(self.datadir)
        manager = self.manager(receive_seed_data_command="my-receive")
        self.settle(manager.post_copy("db1"))  # no seed ever came here: a manual post-copy runs
        self.settle(manager.receive(11))
        self.runner.started[0].result.errback(RuntimeError("ReceiveSeedDataCommand failed with exit status 1"))
        self.assertIn("seed 11 is failed", str(self.fail_with(manager.post_copy("db2"), Conflict)))
        self.assertEqual(self.mysql.post_copies, ["db1"])

    def test_stalled_command_mode_receive_is_killed(self):
        manager = self.manager(receive_seed_data_command="my-receive", seed_stall_timeout_seconds=30)
        self.settle(manager.receive(12))
        for _ in range(10):  # growing: fine
            self.disk.size += 1000
            self.clock.advance(2)
        self.assertFalse(manager.record(12).completed)
        self.clock.advance(40)
        self.clock.advance(2)
        record = manager.record(12)
        self.assertEqual(record.state, "failed")
        self.assertIn("stalled", record.error)
        self.assertTrue(self.runner.started[0].terminated)
        self.assertEqual(record.bytes_done, 10000)

    def test_seeds_beyond_max_concurrent_seeds_are_busy_and_leave_no_trace(self):
        manager = self.manager(max_concurrent_seeds=2, receive_seed_data_command="my-receive")
        self.settle(manager.send("db2", 1))
        self.settle(manager.send("db3", 2))
        for attempt in (manager.send("db4", 3), manager.receive(3)):
            error = self.fail_with(attempt, Busy)
            self.assertEqual(error.retry_after, 60)
            self.assertIn("MaxConcurrentSeeds", str(error))
        self.assertRaises(NotFound, manager.record, 3)
        self.assertEqual((len(self.transfers), self.runner.started), (2, []))
        self.transfer.finish()  # both sends end
        self.settle(manager.receive(3))
        self.assertFalse(manager.record(3).completed)

    def test_unknown_and_reused_seed_ids(self):
        manager = self.manager()
        self.assertRaises(NotFound, manager.record, 99)
        self.fail_with(manager.abort(99), NotFound)
        self.settle(manager.send("db2", 1))
        self.assertIn("not reused", str(self.fail_with(manager.send("db2", 1), Conflict)))

    def test_restart_fails_running_seeds_and_keeps_finished_answers(self):
        store = SeedStore(self.state)
        os.makedirs(store.directory)
        store.save(SeedRecord(1, "receive", "built-in", "", self.datadir, 100.0))  # an older agent's: no datadirs.json
        finished = SeedRecord(2, "send", "built-in", "db2", "/src", 100.0)
        finished.end("succeeded", "", now=200.0)
        store.save(finished)
        manager = self.manager()
        interrupted = manager.record(1)
        self.assertEqual((interrupted.completed, interrupted.succeeded), (True, False))
        self.assertIn("agent stopped", interrupted.error)
        self.assertEqual(self.stored(1)["state"], "failed")
        self.assertEqual(self.eraser.emptied, 1)  # the partial receive is cleared
        self.assertEqual((manager.record(2).completed, manager.record(2).succeeded), (True, True))

    def test_shutdown_stops_jobs_and_leaves_them_for_recovery(self):
        manager = self.manager()
        self.settle(manager.send("db2", 3))
        self.successResultOf(manager.stopService())
        self.assertTrue(self.transfer.aborted)
        self.assertEqual(self.stored(3)["state"], "running")
        self.assertEqual(attrs.fields_dict(SeedRecord).keys(), self.stored(3).keys())


class OneReceivePerDatadirTests(SeedManagerTestCase):
    """Seeds cannot step on each other: one receive per datadir, cleanups only of a seed's own data."""

    def holders(self):
        return SeedStore(self.state).load_holders()

    def test_second_receive_into_the_same_datadir_is_refused(self):
        manager = self.manager(receive_seed_data_command="my-receive")
        self.settle(manager.receive(1))
        error = self.fail_with(manager.receive(2), Conflict)
        self.assertIn("seed 1 is receiving into the datadir", str(error))
        self.assertIn("abort-seed/1", str(error))
        self.assertRaises(NotFound, manager.record, 2)
        self.assertEqual(self.holders(), {self.datadir: Holder(1, "partial")})

    def test_no_new_receive_until_the_aborted_one_is_cleared(self):
        manager = self.manager(receive_seed_data_command="my-receive")
        self.settle(manager.receive(1))
        self.eraser.pending = cleared = Deferred()
        aborting = Deferred.fromCoroutine(manager.abort(1))
        self.assertIn("partial copy is being removed", str(self.fail_with(manager.receive(2), Conflict)))
        cleared.callback(None)
        self.successResultOf(aborting)
        self.settle(manager.receive(2))
        self.runner.started[1].result.callback(None)
        self.assertEqual(self.holders(), {self.datadir: Holder(2, "complete")})
        self.settle(manager.check_post_copy())
        self.assertEqual((manager.record(1).state, manager.record(2).state), ("aborted", "succeeded"))

    def test_restart_leaves_a_later_seeds_data_alone(self):
        store = SeedStore(self.state)
        os.makedirs(store.directory)
        store.save(SeedRecord(1, "receive", "built-in", "", self.datadir, 300.0))  # armed last, never sent
        done = SeedRecord(2, "receive", "built-in", "", self.datadir, 200.0)
        done.end("succeeded", "", now=400.0)
        store.save(done)
        store.save_holders({self.datadir: Holder(2, "complete")})
        manager = self.manager()
        self.assertEqual(manager.record(1).state, "failed")
        self.assertEqual(self.eraser.emptied, 0)
        self.settle(manager.check_post_copy())  # the datadir holds seed 2, whole
        self.assertTrue(manager.record(2).succeeded)

    def test_restart_clears_the_interrupted_seeds_own_partial_data_before_a_new_receive(self):
        store = SeedStore(self.state)
        os.makedirs(store.directory)
        store.save(SeedRecord(1, "receive", "built-in", "", self.datadir, 100.0))
        store.save_holders({self.datadir: Holder(1, "partial")})
        self.eraser.pending = cleared = Deferred()
        manager = self.manager(receive_seed_data_command="my-receive")
        self.fail_with(manager.receive(2), Conflict)
        cleared.callback(None)
        self.assertEqual(self.eraser.emptied, 1)
        self.assertEqual(self.holders(), {self.datadir: Holder(1, "emptied")})
        self.settle(manager.receive(2))

    def test_a_failed_receive_leaves_data_it_does_not_hold_alone(self):
        manager = self.manager(receive_seed_data_command="my-receive")
        self.settle(manager.receive(1))
        self.settle(manager.emptied(self.datadir))  # the datadir no longer holds seed 1's partial data
        self.runner.started[0].result.errback(RuntimeError("exit status 1"))
        self.assertEqual(self.eraser.emptied, 0)
        self.assertEqual(manager.record(1).state, "failed")

    def test_post_copy_answers_for_the_seed_in_the_datadir(self):
        other = os.path.realpath(self.mktemp())
        os.makedirs(other)
        manager = self.manager(receive_seed_data_command="my-receive")
        self.settle(manager.receive(1))
        self.runner.started[0].result.errback(RuntimeError("exit status 1"))
        self.mysql.data_directory = other  # a later seed went to another datadir, and succeeded
        self.settle(manager.receive(2))
        self.runner.started[1].result.callback(None)
        self.settle(manager.check_post_copy())
        self.mysql.data_directory = self.datadir  # back: this datadir holds seed 1's failed copy
        error = self.fail_with(manager.check_post_copy(), Conflict)
        self.assertIn("seed 1 is failed", str(error))

    def test_post_copy_without_a_holder_after_receives_is_refused(self):
        store = SeedStore(self.state)
        os.makedirs(store.directory)
        done = SeedRecord(2, "receive", "built-in", "", self.datadir, 200.0)
        done.end("succeeded", "", now=400.0)
        store.save(done)
        store.save_holders({})
        error = self.fail_with(self.manager().check_post_copy(), Conflict)
        self.assertIn("no record of which seed's data is in the datadir", str(error))

    def test_the_datadir_is_not_emptied_under_a_running_receive(self):
        manager = self.manager(receive_seed_data_command="my-receive")
        self.settle(manager.receive(1))
        error = self.assertRaises(Conflict, manager.refuse_emptying, self.datadir)
        self.assertIn("abort-seed/1", str(error))
        manager.refuse_emptying(self.mktemp())  # another datadir: fine
        self.runner.started[0].result.callback(None)
        manager.refuse_emptying(self.datadir)

    def test_post_copy_refused_once_the_seeded_datadir_was_emptied(self):
        manager = self.manager(receive_seed_data_command="my-receive")
        self.settle(manager.receive(1))
        self.runner.started[0].result.callback(None)
        self.settle(manager.check_post_copy())
        self.settle(manager.emptied(self.datadir))  # delete-mysql-datadir
        self.assertEqual(self.holders(), {self.datadir: Holder(1, "emptied")})
        self.assertIn("holds its data emptied", str(self.fail_with(manager.check_post_copy(), Conflict)))
        self.assertTrue(manager.record(1).succeeded)  # its own outcome stays
