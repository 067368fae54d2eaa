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
from orchagent.errors import AgentError, Conflict, NotFound
from orchagent.host.snapshots import Mount
from orchagent.seed.manager import SeedManager
from orchagent.seed.records import SeedRecord, SeedStore
from orchagent.seed.tree import Progress
from tests.support.pki import CertificateAuthority


class FakeMySQL:
    def __init__(self, datadir, running=False):
        self._datadir, self.running = datadir, running

    async def is_running(self):
        return self.running

    async def datadir(self):
        return self._datadir


class FakeSnapshots:
    def __init__(self, mount):
        self.mount = mount

    async def current_mount(self):
        return self.mount


class FakeEraser:
    def __init__(self):
        self.emptied = 0

    async def empty(self, *, after_failed_seed=False):
        self.emptied += after_failed_seed  # only the clears of a failed seed's copy count
        return []


class FakeDisk:
    def __init__(self):
        self.size = 0

    async def usage(self, path):
        return self.size

    def invalidate(self):
        pass


class FakeCommand:
    """A started command: ``result`` fires when it ends; ``terminate`` ends it."""

    def __init__(self):
        self.result = Deferred()
        self.terminated = False

    def terminate(self):
        self.terminated = True
        if not self.result.called:
            self.result.errback(RuntimeError("killed"))
        return succeed(None)


class FakeRunner:
    def __init__(self):
        self.started = []

    def start_configured(self, command, args, *, name, **options):
        self.started.append((name, command, tuple(args), options))
        self.commands = getattr(self, "commands", []) + [FakeCommand()]
        return self.commands[-1]


class FakeTransfer:
    """``finish(error=None)`` ends it; ``when_done`` Deferreds fire then, as the engine's do."""

    def __init__(self):
        self.progress = Progress(bytes_done=10, bytes_total=100, files_done=1, files_total=4)
        self.waiters = []
        self.aborted = False

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


class SeedManagerTests(SynchronousTestCase):
    def setUp(self):
        self.state = self.mktemp()
        self.datadir = os.path.realpath(self.mktemp())
        os.makedirs(self.datadir)
        self.clock = Clock()
        self.runner = FakeRunner()
        self.eraser = FakeEraser()
        self.disk = FakeDisk()
        self.mysql = FakeMySQL(self.datadir)
        self.snapshots = FakeSnapshots(Mount(path="/mnt/snap", is_mounted=True, mysql_data_path="/mnt/snap/mysql"))
        self.transfers = []

    def manager(self, **config):
        def send(reactor, host, port, seed_id, source, **kwargs):
            self.transfers.append((host, port, seed_id, source, kwargs))
            return self.transfer

        self.transfer = FakeTransfer()
        settings = dict(state_directory=self.state, seed_transfer_secret="s3cret", seed_stall_timeout_seconds=30)
        settings.update(config)
        manager = SeedManager(config=Config(**settings), reactor=self.clock, mysql=self.mysql,
                              snapshots=self.snapshots, eraser=self.eraser, disk=self.disk, runner=self.runner,
                              store=SeedStore(self.state), defer_to_thread=lambda f, *a: succeed(f(*a)),
                              send=send)
        manager.startService()
        self.addCleanup(lambda: manager.running and manager.stopService())
        return manager

    def settle(self, coroutine):
        return self.successResultOf(Deferred.fromCoroutine(coroutine))

    def fail_with(self, coroutine, error_class):
        return self.failureResultOf(Deferred.fromCoroutine(coroutine), error_class).value

    def stored(self, seed_id):
        with open(os.path.join(self.state, "seeds", f"{seed_id}.json")) as f:
            return json.load(f)

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

    def test_send_without_snapshot_needs_mysql_stopped(self):
        self.snapshots.mount = Mount(path="/mnt/snap")
        self.mysql.running = True
        manager = self.manager()
        error = self.fail_with(manager.send("db2", 8), Conflict)
        self.assertIn("no snapshot is mounted", str(error))
        self.mysql.running = False
        self.settle(manager.send("db2", 8))
        self.assertEqual(self.transfers[0][3], self.datadir)

    def test_receive_refused_while_mysql_runs(self):
        self.mysql.running = True
        error = self.fail_with(self.manager(receive_seed_data_command="recv").receive(3), Conflict)
        self.assertIn("MySQL is running", str(error))
        self.assertEqual(self.runner.started, [])

    def test_receive_refuses_what_delete_mysql_datadir_refuses(self):
        for datadir, rule in [("/etc", "top-level directory"), ("/usr/sbin", "system tree"),
                              ("/var/log", "system tree")]:
            self.mysql._datadir = datadir
            error = self.fail_with(self.manager(receive_seed_data_command="recv").receive(3), Conflict)
            self.assertIn(f"(rule: {rule})", str(error))
        self.mysql._datadir = self.datadir
        open(os.path.join(self.datadir, "notes.txt"), "w").close()
        error = self.fail_with(self.manager().receive(4), Conflict)
        self.assertIn("(rule: a datadir or empty)", str(error))
        self.assertEqual((self.runner.started, self.transfers), ([], []))

    def test_command_mode_passes_arguments_as_argv_without_a_wall_clock_timeout(self):
        manager = self.manager(receive_seed_data_command="my-receive", seed_transfer_port=4444)
        self.settle(manager.receive(5))
        self.assertEqual(self.runner.started, [("ReceiveSeedDataCommand", "my-receive", (self.datadir, "4444"),
                                                {"timeout": None})])
        self.runner.commands[0].result.callback(None)
        self.assertTrue(manager.record(5).succeeded)

    def test_abort_kills_then_reads_completed_not_succeeded_and_clears_the_datadir(self):
        manager = self.manager(receive_seed_data_command="my-receive")
        self.settle(manager.receive(9))
        self.settle(manager.abort(9))
        self.assertTrue(self.runner.commands[0].terminated)
        record = manager.record(9)
        self.assertEqual((record.completed, record.succeeded, record.state), (True, False, "aborted"))
        self.assertEqual(self.eraser.emptied, 1)

    def test_abort_after_success_cannot_be_flipped_back(self):
        manager = self.manager()
        self.settle(manager.send("db2", 4))
        self.transfer.finish()
        self.settle(manager.abort(4))
        self.assertEqual((manager.record(4).completed, manager.record(4).succeeded), (True, False))

    def test_failed_receive_is_cleared_and_blocks_post_copy(self):
        manager = self.manager(receive_seed_data_command="my-receive")
        manager.check_post_copy()  # no seed yet: a manual post-copy is allowed
        self.settle(manager.receive(11))
        self.assertRaises(Conflict, manager.check_post_copy)  # still running
        self.runner.commands[0].result.errback(RuntimeError("ReceiveSeedDataCommand failed with exit status 1"))
        record = manager.record(11)
        self.assertEqual((record.state, record.error), ("failed", "ReceiveSeedDataCommand failed with exit status 1"))
        self.assertEqual(self.eraser.emptied, 1)
        with self.assertRaises(Conflict) as caught:
            manager.check_post_copy()
        self.assertIn("seed 11 is failed", str(caught.exception))

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
        self.assertTrue(self.runner.commands[0].terminated)
        self.assertEqual(record.bytes_done, 10000)

    def test_unknown_and_reused_seed_ids(self):
        manager = self.manager()
        self.assertRaises(NotFound, manager.record, 99)
        self.fail_with(manager.abort(99), NotFound)
        self.settle(manager.send("db2", 1))
        self.assertIn("not reused", str(self.fail_with(manager.send("db2", 1), Conflict)))

    def test_restart_fails_running_seeds_and_keeps_finished_answers(self):
        store = SeedStore(self.state)
        os.makedirs(store.directory)
        store.save(SeedRecord(1, "receive", "built-in", "", self.datadir, 100.0))
        finished = SeedRecord(2, "send", "built-in", "db2", "/src", 100.0)
        finished.end("succeeded", now=200.0)
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
