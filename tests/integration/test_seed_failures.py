"""Seeds that fail, between real agents, each driven (and cleaned up) as orchestrator does it.

Every case must end with the target answering ``seed-command-completed`` true and
``seed-command-succeeded`` false (so orchestrator's loop stops and never flips the seed back
to success, "Our rules" 7), with no partial datadir presented as whole (nothing in the target
datadir, not even the hidden staging directory), nothing left writing, no seed listener left
open, and the source untouched (its snapshot, its tables, its mount point).

To catch a seed in flight, the source sends through a :class:`SlowLink` (16 MB/s) to the
target's seed port, and the source datadir carries 96 MB of incompressible ballast; the tests
act as soon as the target's ``seed-status`` shows bytes arriving.  Shared per class: the btrfs
source with its snapshot, the source agent, the link and one target agent.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time

from orchagent.ctl.sequence import BAILING_OUT
from testbed.btrfs import btrfs_filesystem
from testbed.orchestrator import BOOL, HostAgent, Orchestrator, SeedRun
from testbed.seeding import (
    SOURCE_ADDRESS, TARGET_ADDRESS, SeedTarget, entries_outside_staging, table_checksums, transfer_settings,
    tree_listing, write_ballast)
from testbed.waiting import wait_for
from tests.support.linked_seeds import LinkedSeedTestCase
from tests.support.root import requires_root

SECRET = "failure tests' shared secret"
MB = 1024 * 1024
BALLAST_BYTES = 96 * MB
LINK_RATE = 16 * MB
TARGET_STALL_SECONDS = 3
# how long the source tries to resume a seed whose connection dropped (the target was killed, say)
SOURCE_STALL_SECONDS = 5
# orchestrator sleeps 30 s between copy rounds; with 1 s, its 10-rounds-without-progress rule still
# leaves a seed about 10 s to fail for the reason under test.
POLL_SECONDS = 1


class BackgroundSeed:
    """``Orchestrator.seed`` in a thread, so the test can hurt the seed while orchestrator polls."""

    def __init__(self, orchestrator: Orchestrator, target: HostAgent, source: HostAgent, seed_id: int, **options):
        self._result: list = []
        options = {"wait_before_send": 0.3, "poll_seconds": POLL_SECONDS, **options}

        def run():
            try:
                self._result.append(orchestrator.seed(target, source, seed_id, **options))
            except BaseException as e:  # a ContractViolation: re-raised in join()
                self._result.append(e)

        self._thread = threading.Thread(target=run, daemon=True, name=f"seed-{seed_id}")
        self._thread.start()

    def join(self, timeout: float = 60) -> SeedRun:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"orchestrator's seed loop did not end within {timeout} s")
        if isinstance(self._result[0], BaseException):
            raise self._result[0]
        return self._result[0]


@requires_root("a btrfs loop device for the source's snapshot; MariaDB sandboxes")
class SeedFailureTests(LinkedSeedTestCase):
    """Every failed seed ends completed-not-succeeded, nothing partial left on the target, the source untouched."""

    source_options = {"size_mb": 400, "rows": 1000, "ballast_bytes": BALLAST_BYTES}
    link_rate = LINK_RATE

    @classmethod
    def build(cls):
        cls.source_checksums = cls.source.checksums
        cls.source_agent = cls.start_source_agent(SECRET)
        cls.target_dir = os.path.join(cls.directory, "target")
        cls.target_agent = cls.start_target_agent(SeedTarget(cls.target_dir))

        orchestrator = Orchestrator()
        assert orchestrator.command(cls.source_agent, "create-snapshot").status == 200
        volumes = orchestrator.get_agent(cls.source_agent).LogicalVolumes
        assert len(volumes) == 1, volumes
        cls.snapshot = volumes[0]["Path"]
        cls.snapshot_listing = tree_listing(cls.snapshot)
        cls.seed_ids = iter(range(100, 200))

    @classmethod
    def start_source_agent(cls, secret: str) -> HostAgent:
        """The source sends to the link, which forwards to the target's seed port."""
        settings = transfer_settings(cls.link.port, secret, SeedStallTimeoutSeconds=SOURCE_STALL_SECONDS)
        return cls.start_agent({**cls.source.settings(), **settings}, SOURCE_ADDRESS)

    @classmethod
    def start_target_agent(cls, target: SeedTarget, directory: str | None = None, **extra) -> HostAgent:
        settings = {**target.settings(), **extra,
                    **transfer_settings(cls.target_seed_port, SECRET, SeedStallTimeoutSeconds=TARGET_STALL_SECONDS)}
        return cls.start_agent(settings, TARGET_ADDRESS, directory)

    def setUp(self):
        self.orchestrator = Orchestrator()
        self.seed_id = next(self.seed_ids)
        # whatever a test did, the next one finds the source's snapshot unmounted
        self.addCleanup(self.orchestrator.command, self.source_agent, "umount")
        self.target_datadir = os.path.join(self.target_dir, "server", "data")

    # --- what every failure must leave behind ----------------------------------------------------

    def status(self, agent: HostAgent, seed_id: int | None = None) -> dict | None:
        call = self.orchestrator.command(agent, f"seed-status/{seed_id or self.seed_id}")
        return call.json() if call.status == 200 else None

    def wait_until_in_flight(self, target: HostAgent) -> dict:
        """Until the target has received some data but far from all of it."""
        status = wait_for(lambda: (s := self.status(target)) and s["BytesDone"] > 0 and s,
                          what="the first bytes of the seed on the target")
        self.assertFalse(status["Completed"], status)
        self.assertLess(status["BytesDone"], BALLAST_BYTES / 2, status)
        return status

    def assertFailedOnTarget(self, target: HostAgent, datadir: str, state: str, error_contains: str) -> dict:
        seed_id = self.seed_id
        completed, _ = self.orchestrator.decoded(target, f"seed-command-completed/{seed_id}", BOOL)
        succeeded, _ = self.orchestrator.decoded(target, f"seed-command-succeeded/{seed_id}", BOOL)
        self.assertEqual((completed, succeeded), (True, False))
        status = self.status(target)
        self.assertEqual((status["State"], status["Completed"], status["Succeeded"]), (state, True, False), status)
        self.assertIn(error_contains, status["Error"])
        self.assertIs(type(status["BytesDone"]), int)
        # nothing presented as a datadir: at most the hidden staging directory, which the agent
        # removes (with everything else of the seed) right after it reports the seed completed
        self.assertEqual(entries_outside_staging(datadir), [])
        wait_for(lambda: os.listdir(datadir) == [], what=f"{datadir} to be emptied")
        wait_for(lambda: not self.seed_port_open(), what="the seed listener to close")
        time.sleep(0.5)  # and nothing still writes
        self.assertEqual(os.listdir(datadir), [])
        self.assertFalse(self.orchestrator.get_agent(target).MySQLRunning)
        self.assertEqual(self.orchestrator.command(target, f"post-copy/?sourceHost={SOURCE_ADDRESS}").status, 409)
        return status

    def seed_port_open(self) -> bool:
        try:
            socket.create_connection((TARGET_ADDRESS, self.target_seed_port), timeout=5).close()
        except ConnectionRefusedError:
            return False
        return True

    def assertSourceUntouched(self):
        agent = self.orchestrator.get_agent(self.source_agent)
        self.assertEqual([volume["Path"] for volume in agent.LogicalVolumes], [self.snapshot])
        self.assertFalse(agent.MountPoint["IsMounted"], agent.MountPoint)
        self.assertTrue(agent.MySQLRunning)
        self.assertEqual(tree_listing(self.snapshot), self.snapshot_listing)
        self.assertEqual(table_checksums(self.source.sandbox), self.source_checksums)

    def assertBailedOut(self, run: SeedRun, source: HostAgent):
        """orchestrator's failure path: abort on the source, then the target, then umount on the source."""
        self.assertEqual(run.error, BAILING_OUT)
        self.assertEqual(run.states[-1].error, BAILING_OUT)
        self.assertEqual([(call.host, call.command) for call in run.calls[-3:]], [
            (source.hostname, f"abort-seed/{self.seed_id}"), (TARGET_ADDRESS, f"abort-seed/{self.seed_id}"),
            (source.hostname, "umount")])

    # --- the cases -------------------------------------------------------------------------------

    def test_abort_mid_transfer(self):
        seeding = BackgroundSeed(self.orchestrator, self.target_agent, self.source_agent, self.seed_id)
        arrived = self.wait_until_in_flight(self.target_agent)["BytesDone"]
        time.sleep(0.5)
        # orchestrator's progress, the target's mysql-du, is the receive's own count: live, not a
        # walk cached from before the copy began
        self.assertGreater(self.orchestrator.get_agent(self.target_agent).MySQLDiskUsage, arrived)
        self.orchestrator.abort_seed(self.seed_id, self.target_agent, self.source_agent)  # agent-abort-seed
        run = seeding.join()

        self.assertBailedOut(run, self.source_agent)
        self.assertFailedOnTarget(self.target_agent, self.target_datadir, "aborted", "aborted")
        sent = self.status(self.source_agent)  # aborted, or failed first when the target hung up
        self.assertEqual((sent["Completed"], sent["Succeeded"]), (True, False))
        self.assertSourceUntouched()

    def test_source_agent_killed_mid_transfer(self):
        source = self.start_source_agent(SECRET)
        seeding = BackgroundSeed(self.orchestrator, self.target_agent, source, self.seed_id)
        self.wait_until_in_flight(self.target_agent)
        process = self.running_agent(source).process
        process.kill()
        process.wait()
        run = seeding.join()

        self.assertBailedOut(run, source)
        for call in run.calls[-3:]:
            if call.host == SOURCE_ADDRESS:
                self.assertIsNone(call.status)  # the source is gone; orchestrator ignores that
        self.assertFailedOnTarget(self.target_agent, self.target_datadir, "failed", "connection ended")
        # the dead agent left its snapshot mounted: the next agent on the host unmounts it
        self.orchestrator.command(self.source_agent, "umount")
        self.assertSourceUntouched()

    def test_target_file_system_full(self):
        small = btrfs_filesystem(self, size_mb=256)
        target_dir = small.directory("target")
        target = self.start_target_agent(SeedTarget(target_dir))
        self.addCleanup(self.running_agent(target).stop)  # before the file system goes
        datadir = os.path.join(target_dir, "server", "data")
        filler = os.path.join(small.mount_point, "filler")

        def fill(leave: int):
            free = os.statvfs(small.mount_point)
            write_ballast(filler, free.f_bavail * free.f_frsize - leave)

        # orchestrator's own check first: more data than free space, and it does not even start
        fill(leave=64 * MB)
        run = self.orchestrator.seed(target, self.source_agent, self.seed_id, wait_before_send=0,
                                     poll_seconds=POLL_SECONDS)
        self.assertTrue(run.error.startswith(f"Not enough disk space on target host {TARGET_ADDRESS}."), [(s.action, s.error) for s in run.states])
        self.assertEqual(run.calls[-1].command, "umount")
        self.assertNotIn(f"receive-mysql-seed-data/{self.seed_id}", run.commands())
        self.assertSourceUntouched()

        # now the space goes while the seed runs (say a log grows): the receiver hits ENOSPC
        os.unlink(filler)
        os.sync()  # btrfs shows freed space only after a commit
        self.seed_id = next(self.seed_ids)
        self.link.rate = None
        self.addCleanup(setattr, self.link, "rate", LINK_RATE)

        def fill_once_checked(run, state):
            if state.action.endswith("will now receive data in background"):
                fill(leave=32 * MB)

        run = self.orchestrator.seed(target, self.source_agent, self.seed_id, wait_before_send=0.3,
                                     poll_seconds=POLL_SECONDS, on_state=fill_once_checked)
        self.assertBailedOut(run, self.source_agent)
        status = self.assertFailedOnTarget(target, datadir, "failed", "No space left on device")
        self.assertGreater(status["BytesDone"], 0)
        os.sync()
        free = os.statvfs(small.mount_point)
        self.assertGreater(free.f_bavail * free.f_frsize, 24 * MB)  # the partial copy is gone
        self.assertTrue(os.path.exists(filler))  # and nothing outside the datadir was touched
        self.assertSourceUntouched()

    def test_wrong_secret_on_the_sender(self):
        source = self.start_source_agent("not the target's secret")
        run = self.orchestrator.seed(self.target_agent, source, self.seed_id, wait_before_send=0.3,
                                     poll_seconds=0.5)  # nothing arrives: the 10 stale rounds are the point

        # the target never receives a byte: either its receive gives up when no sender could
        # authenticate within SeedStallTimeoutSeconds, or orchestrator does after 10 rounds
        # without progress and aborts it
        self.assertBailedOut(run, source)
        self.assertEqual(len(set(run.copied)), 1, run.copied)
        status = self.status(self.target_agent)
        if status["State"] == "failed":
            self.assertFailedOnTarget(self.target_agent, self.target_datadir, "failed", "SeedTransferSecret")
        else:
            self.assertFailedOnTarget(self.target_agent, self.target_datadir, "aborted", "aborted")
        self.assertEqual(status["BytesDone"], 0)
        sent = self.status(source)
        self.assertEqual((sent["State"], sent["Succeeded"]), ("failed", False))
        self.assertIn("SeedTransferSecret", sent["Error"])
        self.assertSourceUntouched()

    def test_stalled_sender(self):
        seeding = BackgroundSeed(self.orchestrator, self.target_agent, self.source_agent, self.seed_id)
        self.wait_until_in_flight(self.target_agent)
        self.link.freeze()  # the sender stops sending, and nothing closes
        self.addCleanup(self.link.thaw)
        started = time.monotonic()
        run = seeding.join()

        self.assertGreaterEqual(time.monotonic() - started, TARGET_STALL_SECONDS - 0.5)
        self.assertBailedOut(run, self.source_agent)
        self.assertFailedOnTarget(self.target_agent, self.target_datadir, "failed", "stalled")
        sent = self.status(self.source_agent)
        self.assertEqual((sent["Completed"], sent["Succeeded"]), (True, False))
        self.assertSourceUntouched()

    def test_target_agent_killed_mid_seed_and_restarted(self):
        target_dir = tempfile.mkdtemp(dir=self.directory)
        agent_dir = tempfile.mkdtemp(dir=self.directory)
        seed_target = SeedTarget(target_dir)
        target = self.start_target_agent(seed_target, agent_dir)
        source = self.source_agent
        # orchestrator's steps up to the copy loop
        self.assertEqual(self.orchestrator.command(source, f"mountlv?lv={self.snapshot}").status, 200)
        self.addCleanup(self.orchestrator.command, source, "umount")
        self.assertEqual(self.orchestrator.command(target, "delete-mysql-datadir").status, 200)
        self.assertEqual(self.orchestrator.command(target, f"receive-mysql-seed-data/{self.seed_id}").status, 200)
        self.assertEqual(self.orchestrator.command(
            source, f"send-mysql-seed-data/{TARGET_ADDRESS}/{self.seed_id}").status, 200)
        self.wait_until_in_flight(target)
        process = self.running_agent(target).process
        process.kill()
        process.wait()

        restarted = self.start_target_agent(seed_target, agent_dir, HTTPPort=target.port)
        datadir = os.path.join(target_dir, "server", "data")
        try:
            wait_for(lambda: os.listdir(datadir) == [], what="the partial copy to be cleared")
        except AssertionError:
            self.fail(f"the partial copy stayed: {os.listdir(datadir)}\n{self.agents[-1].log()[-4000:]}")
        self.assertFailedOnTarget(restarted, datadir, "failed", "agent stopped")
        # the source tries to resume for SeedStallTimeoutSeconds: the restarted target has no receive armed
        sent = wait_for(lambda: (s := self.status(source)) and s["Completed"] and s, what="the sender to fail")
        self.assertFalse(sent["Succeeded"])
        self.assertRegex(sent["Error"], "could not be resumed within 5 s|no receive is armed")
        self.orchestrator.command(source, f"abort-seed/{self.seed_id}")
        self.assertEqual(self.orchestrator.command(source, "umount").status, 200)
        self.assertSourceUntouched()

    def test_seeds_cannot_step_on_each_other(self):
        """One armed receive per datadir; a stale receive's cleanup never removes a later seed's data."""
        target_dir = tempfile.mkdtemp(dir=self.directory)
        agent_dir = tempfile.mkdtemp(dir=self.directory)
        seed_target = SeedTarget(target_dir)
        target = self.start_target_agent(seed_target, agent_dir)
        datadir = os.path.join(target_dir, "server", "data")
        stale, seed_id = self.seed_id, next(self.seed_ids)
        self.assertEqual(self.orchestrator.command(target, f"receive-mysql-seed-data/{stale}").status, 200)
        second = self.orchestrator.command(target, f"receive-mysql-seed-data/{seed_id}")
        self.assertEqual(second.status, 409, second.body)
        self.assertIn(f"seed {stale} is receiving into the datadir", second.body.decode())
        self.assertEqual(self.orchestrator.command(target, "delete-mysql-datadir").status, 409)
        self.assertEqual(self.orchestrator.command(target, f"abort-seed/{stale}").status, 200)

        # the later seed arrives whole (at full speed: what it moves is not the point here)
        self.link.rate = None
        self.addCleanup(setattr, self.link, "rate", LINK_RATE)
        source = self.source_agent
        self.assertEqual(self.orchestrator.command(source, f"mountlv?lv={self.snapshot}").status, 200)
        self.assertEqual(self.orchestrator.command(target, f"receive-mysql-seed-data/{seed_id}").status, 200)
        sent = self.orchestrator.command(source, f"send-mysql-seed-data/{TARGET_ADDRESS}/{seed_id}")
        self.assertEqual(sent.status, 200)
        wait_for(lambda: (s := self.status(target, seed_id)) and s["Completed"], timeout=60, what="the seed")
        self.assertTrue(self.status(target, seed_id)["Succeeded"], self.status(target, seed_id))
        self.assertEqual(self.orchestrator.command(source, "umount").status, 200)
        received = tree_listing(datadir)
        self.assertIn("ibdata1", received)

        # the agent restarts with the stale receive still "running" in its records (as an older
        # agent could leave it): failing it at start must not empty the datadir seed_id filled
        agent = self.running_agent(target)
        agent.stop()
        record_path = os.path.join(agent_dir, "state", "seeds", f"{stale}.json")
        with open(record_path) as f:
            record = json.load(f)
        record.update(state="running", error="", ended_at=None, started_at=time.time())
        with open(record_path, "w") as f:
            json.dump(record, f)
        restarted = self.start_target_agent(seed_target, agent_dir, HTTPPort=target.port)
        wait_for(lambda: (s := self.status(restarted, stale)) and s["Completed"], what="the stale seed failed")
        time.sleep(1)  # a wrong cleanup would have started by now
        self.assertEqual(tree_listing(datadir), received)
        self.assertTrue(self.status(restarted, seed_id)["Succeeded"])
        self.assertNotEqual(self.orchestrator.command(restarted, f"post-copy/?sourceHost={SOURCE_ADDRESS}").status, 409)
        # once the datadir is emptied, post-copy has no whole seed to prepare
        self.assertEqual(self.orchestrator.command(restarted, "delete-mysql-datadir").status, 200)
        self.assertEqual(self.orchestrator.command(restarted, f"post-copy/?sourceHost={SOURCE_ADDRESS}").status, 409)
        self.assertTrue(self.status(restarted, seed_id)["Succeeded"])
