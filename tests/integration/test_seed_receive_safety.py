"""A seed received into a datadir owned by the ``mysql`` user, who may attack it meanwhile.

Real seeds into a datadir owned by the MySQL user, while that user, in its own process
(``tests/support/datadir_attacker.py``), swaps the staging directory for symlinks and plants
symlinks under names about to arrive: transfers over loopback TCP with both sides in this
process (which runs as root, like the agent), and a seed between two real agents.  Whatever
the user does, nothing outside the datadir is created, changed or removed, and the seed either
arrives whole or leaves nothing of its own in the datadir.  Received files never carry set-uid,
set-gid or sticky bits, and belong to the datadir's owner whatever the sender said.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from orchagent.seed.protocol import TransferFailed
from orchagent.seed.receiver import SeedReceiverServer
from orchagent.seed.sender import send_tree
from testbed.agent import free_port, start_agent
from testbed.orchestrator import HostAgent, Orchestrator
from testbed.seeding import SeedTarget, transfer_settings
from tests.support import datadir_attacker
from tests.support.deferreds import inline
from tests.support.root import root_skip_reason
from tests.support.seed_trees import build_tree, describe_tree

SECRET = b"receive safety"
SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX


def mysql_user() -> pwd.struct_passwd:
    reason = root_skip_reason("the receiver must be root and the attacker another user")
    if reason:
        raise SkipTest(reason)
    for name in ("mysql", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise SkipTest("needs a 'mysql' or 'nobody' user to own the datadir")


def snapshot(root: str) -> dict[str, tuple]:
    """Everything about ``root`` and below that a create, chmod, chown, rename or unlink changes."""
    found = {}
    for directory, dirnames, filenames in os.walk(root):
        for path in [directory] + [os.path.join(directory, name) for name in dirnames + filenames]:
            st = os.lstat(path)
            content = None
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    content = hashlib.sha256(f.read()).hexdigest()
            found[os.path.relpath(path, root)] = (st.st_mode, st.st_uid, st.st_gid, st.st_nlink, st.st_mtime_ns,
                                                  st.st_ctime_ns, content)
    return found


class Scene:
    """A datadir of the MySQL user's, and outside it a victim directory of root's and a lure of
    the user's (``<lure>/tree`` leads to the victim); the user attacks the datadir on request."""

    def __init__(self, test, base: str, datadir: str) -> None:
        self.test = test
        self.owner = mysql_user()
        os.chmod(base, 0o755)  # the MySQL user must reach its datadir
        self.datadir = datadir
        os.makedirs(datadir, 0o750, exist_ok=True)
        os.chown(datadir, self.owner.pw_uid, self.owner.pw_gid)
        self.victim = os.path.join(base, "victim")
        os.makedirs(os.path.join(self.victim, "db one"))
        for name in ("ibdata1", "keep", "db one/t1.ibd"):
            with open(os.path.join(self.victim, name), "w") as f:
                f.write("root's own\n")
        self.lure = os.path.join(base, "lure")
        os.mkdir(self.lure, 0o755)
        os.chown(self.lure, self.owner.pw_uid, self.owner.pw_gid)
        self.victim_before = snapshot(self.victim)
        self.attacker: subprocess.Popen | None = None

    def attack(self, plant_after: float = -1.0, names=()) -> None:
        """Start the attacker as the datadir's owner; it runs until :meth:`stop`."""
        with open(datadir_attacker.__file__) as f:
            script = f.read()
        self.attacker = subprocess.Popen(
            ["setpriv", f"--reuid={self.owner.pw_uid}", f"--regid={self.owner.pw_gid}", "--clear-groups",
             "/usr/bin/python3", "-c", script, self.datadir, self.victim, self.lure, str(plant_after), *names],
            stdout=subprocess.PIPE, text=True)
        self.test.addCleanup(self.stop)
        self.test.assertEqual(self.attacker.stdout.readline(), "ready\n")

    def stop(self) -> None:
        if self.attacker is not None:
            self.attacker.kill()
            self.attacker.wait()
            self.attacker.stdout.close()
            self.attacker = None

    def assertOutsideUntouched(self) -> None:
        self.test.assertEqual(snapshot(self.victim), self.victim_before)
        for directory, dirnames, filenames in os.walk(self.lure):
            for name in dirnames + filenames:
                self.test.assertEqual(os.lstat(os.path.join(directory, name)).st_uid, self.owner.pw_uid,
                                      f"the agent created {name!r} outside the datadir")

    def assertReceivedWhole(self, source: str) -> None:
        """The datadir holds the source's tree, without special bits, owned by the datadir's owner."""
        names = set(os.listdir(os.fsencode(source)))
        received = {path: entry for path, entry in describe_tree(self.datadir).items()
                    if path.split(b"/")[0] in names}
        self.test.assertEqual(received, describe_tree(source))
        for path in received:
            st = os.lstat(os.path.join(os.fsencode(self.datadir), path))
            self.test.assertEqual((st.st_uid, st.st_gid), (self.owner.pw_uid, self.owner.pw_gid), path)
            self.test.assertFalse(st.st_mode & SPECIAL_BITS, path)

    def assertOutcome(self, source: str, succeeded: bool, error: object) -> None:
        """Whole on success; on failure nothing of the seed's left; either way only the attacker's
        symlinks besides, and nothing outside the datadir touched."""
        self.stop()
        self.assertOutsideUntouched()
        leftovers = set(os.listdir(self.datadir))
        if succeeded:
            self.assertReceivedWhole(source)
            leftovers -= set(os.listdir(source))
        for name in leftovers:
            self.test.assertTrue(os.path.islink(os.path.join(self.datadir, name)), (name, error))


def build_source(source: str) -> None:
    """The test tree, with a long run of files at the top, where a swapped staging directory leads."""
    build_tree(source, big_bytes=4 * 1024 * 1024, small_files=100)
    for i in range(600):
        with open(os.path.join(source, f"top-{i}.frm"), "wb") as f:
            f.write(b"x" * (i % 700))


class _InProcess(TestCase):
    """A seed between a receiver and a sender in this process, over loopback TCP."""

    timeout = 60

    def setUp(self):
        base = tempfile.mkdtemp(prefix="orchagent-receive-safety-")
        self.addCleanup(shutil.rmtree, base, ignore_errors=True)
        self.scene = Scene(self, base, os.path.join(base, "datadir"))
        self.source = os.path.join(base, "source")

    async def seed(self, seed_id: str):
        """Send the source into the datadir; returns the receiving transfer once both sides ended."""
        server = SeedReceiverServer(reactor, secret=SECRET, stall_timeout=10)
        port = await server.listen(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))
        self.addCleanup(server.stopListening)
        receiving = server.arm(seed_id, self.scene.datadir)
        sending = send_tree(reactor, "127.0.0.1", port.getHost().port, seed_id, self.source, secret=SECRET)
        for transfer in (sending, receiving):
            try:
                await transfer.when_done()
            except TransferFailed:
                pass
        return receiving


class ReceiveRaceTests(_InProcess):
    """The datadir's owner racing a receive cannot make the agent touch anything outside the datadir."""

    async def race(self, plant_after: float = -1.0, names=()):
        build_source(self.source)
        self.scene.attack(plant_after, names)
        receiving = await self.seed("7")
        self.scene.assertOutcome(self.source, receiving.state == "succeeded", receiving.error)
        return receiving

    @inline
    async def test_staging_directory_swapped_for_symlinks(self):
        receiving = await self.race()
        self.assertEqual(receiving.state, "succeeded", receiving.error)

    @inline
    async def test_symlinks_planted_under_the_names_to_arrive(self):
        receiving = await self.race(plant_after=0, names=["ibdata1", "db one", "keep"])
        self.assertEqual(receiving.state, "failed")
        self.assertIn("is not empty", str(receiving.error))

    @inline
    async def test_symlinks_planted_while_the_tree_moves_in(self):
        await self.race(plant_after=0.15, names=["top-599.frm", "sparse.ibd", "ibdata1", "db one"])


class ReceivedOwnershipTests(_InProcess):
    """Received entries lose set-uid/set-gid/sticky bits and belong to the datadir's owner."""

    @inline
    async def test_no_special_bits_and_the_datadirs_owner(self):
        build_tree(self.source, big_bytes=64 * 1024, small_files=5)
        db = os.path.join(self.source, "db one")
        os.chmod(os.path.join(db, "t3.ibd"), 0o2750)
        os.chmod(os.path.join(db, "t4.ibd"), 0o1644)
        os.chmod(os.path.join(self.source, "empty top"), 0o3775)
        os.chown(os.path.join(db, "t2.ibd"), 0, 0)
        os.chown(os.path.join(db, "t3.ibd"), 12345, 54321)  # no such user here
        os.chown(os.path.join(db, "t4.ibd"), 65534, 65534)
        os.chown(os.path.join(self.source, "dangling"), 4242, 4242, follow_symlinks=False)
        os.chmod(os.path.join(db, "t2.ibd"), 0o6755)  # after chown, which clears the bits
        receiving = await self.seed("8")
        self.assertEqual(receiving.state, "succeeded", receiving.error)
        self.scene.assertReceivedWhole(self.source)
        self.assertEqual(sorted(os.listdir(self.scene.datadir)), sorted(os.listdir(self.source)))
        modes = {name: stat.S_IMODE(os.lstat(os.path.join(self.scene.datadir, name)).st_mode)
                 for name in ("db one/t2.ibd", "db one/t3.ibd", "db one/t4.ibd", "empty top")}
        self.assertEqual(modes, {"db one/t2.ibd": 0o755, "db one/t3.ibd": 0o750, "db one/t4.ibd": 0o644,
                                 "empty top": 0o775})


class AgentReceiveRaceTests(SynchronousTestCase):
    """Between two real agents, the target datadir's owner racing the receive touches nothing outside it."""

    SOURCE_ADDRESS, TARGET_ADDRESS = "127.0.0.1", "127.0.0.2"

    def test_staging_directory_swapped_between_real_agents(self):
        base = tempfile.mkdtemp(prefix="orchagent-receive-safety-agents-")
        self.addCleanup(shutil.rmtree, base, ignore_errors=True)
        source, target = SeedTarget(os.path.join(base, "source")), SeedTarget(os.path.join(base, "target"))
        os.rmdir(source.sandbox.datadir)
        build_source(source.sandbox.datadir)  # sent as it is: its MariaDB is stopped, nothing is mounted
        scene = Scene(self, base, target.sandbox.datadir)
        transfer = transfer_settings(free_port(self.TARGET_ADDRESS), "race between agents")
        agents = []
        for host, address in ((source, self.SOURCE_ADDRESS), (target, self.TARGET_ADDRESS)):
            agent = start_agent({**host.settings(), **transfer}, address=address,
                                directory=tempfile.mkdtemp(dir=base))
            self.addCleanup(agent.stop)
            agents.append(HostAgent.of(agent))
        orchestrator = Orchestrator()
        scene.attack()
        self.assertEqual(orchestrator.command(agents[1], "receive-mysql-seed-data/21").status, 200)
        self.assertEqual(orchestrator.command(agents[0], f"send-mysql-seed-data/{self.TARGET_ADDRESS}/21").status,
                         200)
        deadline = time.monotonic() + 30
        while not (status := orchestrator.command(agents[1], "seed-status/21").json())["Completed"]:
            self.assertLess(time.monotonic(), deadline, status)
            time.sleep(0.1)
        scene.assertOutcome(source.sandbox.datadir, status["Succeeded"], status["Error"])
        self.assertTrue(status["Succeeded"], status)
