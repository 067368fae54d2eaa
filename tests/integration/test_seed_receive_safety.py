"""A seed received into a datadir owned by the ``mysql`` user, who may attack it meanwhile.

Real transfers over loopback TCP (both sides in this process, which runs as root like the
agent) into a datadir owned by the MySQL user, while that user, in its own process, swaps the
staging directory for symlinks and plants symlinks under names about to arrive.  Whatever it
does, nothing outside the datadir is created, changed or removed, and the seed either arrives
whole or leaves nothing of its own in the datadir.  Received files never carry set-uid,
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

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import SkipTest, TestCase

from orchagent.seed.transfer import SeedReceiverServer, TransferFailed, send_tree
from tests.support import datadir_attacker
from tests.support.seed_trees import build_tree, describe_tree
from tests.support.storage import inline

SECRET = b"receive safety"
SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX


def mysql_user() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        raise SkipTest("needs root: the receiver must be root and the attacker another user")
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


class _Receiving(TestCase):
    """Shared set-up: a source tree, and a datadir owned by the MySQL user in a fresh directory."""

    timeout = 60

    def setUp(self):
        self.owner = mysql_user()
        self.base = tempfile.mkdtemp(prefix="orchagent-receive-safety-")
        self.addCleanup(shutil.rmtree, self.base, ignore_errors=True)
        os.chmod(self.base, 0o755)  # the MySQL user must reach its datadir
        self.datadir = os.path.join(self.base, "datadir")
        os.mkdir(self.datadir, 0o750)
        os.chown(self.datadir, self.owner.pw_uid, self.owner.pw_gid)
        self.source = os.path.join(self.base, "source")

    async def seed(self, seed_id: str):
        """Send the source into the datadir; returns the receiving transfer once both sides ended."""
        server = SeedReceiverServer(reactor, secret=SECRET, stall_timeout=10)
        port = await server.listen(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))
        self.addCleanup(server.stopListening)
        receiving = server.arm(seed_id, self.datadir)
        sending = send_tree(reactor, "127.0.0.1", port.getHost().port, seed_id, self.source, secret=SECRET)
        for transfer in (sending, receiving):
            try:
                await transfer.when_done()
            except TransferFailed:
                pass
        return receiving

    def assertReceivedWhole(self, receiving):
        """The datadir holds the source's tree, without special bits, owned by the datadir's owner."""
        self.assertEqual(receiving.state, "succeeded", receiving.error)
        names = set(os.listdir(os.fsencode(self.source)))
        received = {path: entry for path, entry in describe_tree(self.datadir).items()
                    if path.split(b"/")[0] in names}
        self.assertEqual(received, describe_tree(self.source))
        for path in received:
            st = os.lstat(os.path.join(os.fsencode(self.datadir), path))
            self.assertEqual((st.st_uid, st.st_gid), (self.owner.pw_uid, self.owner.pw_gid), path)
            self.assertFalse(st.st_mode & SPECIAL_BITS, path)


class ReceiveRaceTests(_Receiving):
    """The datadir's owner racing a receive cannot make the agent touch anything outside the datadir."""

    def setUp(self):
        super().setUp()
        build_tree(self.source, big_bytes=8 * 1024 * 1024, small_files=300)
        for i in range(1500):  # a long run of files at the top, where a swapped staging directory leads
            with open(os.path.join(self.source, f"top-{i}.frm"), "wb") as f:
                f.write(b"x" * (i % 700))
        self.victim = os.path.join(self.base, "victim")  # root's, outside the datadir
        os.makedirs(os.path.join(self.victim, "db one"))
        for name in ("ibdata1", "keep", "db one/t1.ibd"):
            with open(os.path.join(self.victim, name), "w") as f:
                f.write("root's own\n")
        self.lure = os.path.join(self.base, "lure")  # the attacker's, outside the datadir too
        os.mkdir(self.lure, 0o755)
        os.chown(self.lure, self.owner.pw_uid, self.owner.pw_gid)

    def attack(self, plant_after: float = -1.0, names=()) -> None:
        """Start the attacker as the datadir's owner; it runs until the test ends it."""
        with open(datadir_attacker.__file__) as f:
            script = f.read()
        attacker = subprocess.Popen(
            ["setpriv", f"--reuid={self.owner.pw_uid}", f"--regid={self.owner.pw_gid}", "--clear-groups",
             "/usr/bin/python3", "-c", script, self.datadir, self.victim, self.lure, str(plant_after), *names],
            stdout=subprocess.PIPE, text=True)
        self.attacker = attacker
        self.addCleanup(self.stop_attack)
        self.assertEqual(attacker.stdout.readline(), "ready\n")

    def stop_attack(self) -> None:
        if self.attacker.poll() is None:
            self.attacker.kill()
        self.attacker.wait()
        self.attacker.stdout.close()

    async def race(self, plant_after: float = -1.0, names=()) -> None:
        victim_before = snapshot(self.victim)
        self.attack(plant_after, names)
        receiving = await self.seed("7")
        self.stop_attack()
        self.assertEqual(snapshot(self.victim), victim_before)
        for directory, dirnames, filenames in os.walk(self.lure):
            for name in dirnames + filenames:
                self.assertEqual(os.lstat(os.path.join(directory, name)).st_uid, self.owner.pw_uid,
                                 f"the agent created {name!r} outside the datadir")
        if receiving.state == "succeeded":
            self.assertReceivedWhole(receiving)
            leftovers = set(os.listdir(self.datadir)) - set(os.listdir(self.source))
        else:
            leftovers = set(os.listdir(self.datadir))
        for name in leftovers:  # the attacker's symlinks only: nothing the seed wrote
            self.assertTrue(os.path.islink(os.path.join(self.datadir, name)), (name, receiving.error))
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
        names = sorted(os.listdir(self.source))
        await self.race(plant_after=0.15, names=names[::-1])


class ReceivedOwnershipTests(_Receiving):
    """Received entries lose set-uid/set-gid/sticky bits and belong to the datadir's owner."""

    @inline
    async def test_no_special_bits_and_the_datadirs_owner(self):
        build_tree(self.source, big_bytes=64 * 1024, small_files=5)
        db = os.path.join(self.source, "db one")
        os.chmod(os.path.join(db, "t2.ibd"), 0o4755)
        os.chmod(os.path.join(db, "t3.ibd"), 0o2750)
        os.chmod(os.path.join(db, "t4.ibd"), 0o1644)
        os.chmod(os.path.join(self.source, "empty top"), 0o3775)
        os.chown(os.path.join(db, "t2.ibd"), 0, 0)
        os.chown(os.path.join(db, "t3.ibd"), 12345, 54321)  # no such user here
        os.chown(os.path.join(db, "t4.ibd"), 65534, 65534)
        os.chown(os.path.join(self.source, "dangling"), 4242, 4242, follow_symlinks=False)
        os.chmod(os.path.join(db, "t2.ibd"), 0o6755)  # chown cleared the bits
        receiving = await self.seed("8")
        self.assertReceivedWhole(receiving)
        self.assertEqual(os.listdir(self.datadir), os.listdir(self.source))
        modes = {name: stat.S_IMODE(os.lstat(os.path.join(self.datadir, name)).st_mode)
                 for name in ("db one/t2.ibd", "db one/t3.ibd", "db one/t4.ibd", "empty top")}
        self.assertEqual(modes, {"db one/t2.ibd": 0o755, "db one/t3.ibd": 0o750, "db one/t4.ibd": 0o644,
                                 "empty top": 0o775})
