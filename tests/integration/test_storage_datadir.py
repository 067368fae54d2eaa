"""Emptying the datadir stops at mount boundaries: a file system mounted inside it survives (needs root)."""

import os
import subprocess

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from orchagent.config import Config
from orchagent.graph import make_host, storage_api
from orchagent.host.datadir import empty_directory
from orchagent.threads import thread_runner
from tests.support.deferreds import inline
from tests.support.root import requires_root
from tests.support.routes import LiveClient, routes_for
from tests.support.storage import StubMySQL


@requires_root("a tmpfs mounted inside the datadir")
class MountBoundaryTests(TestCase):
    """Emptying a datadir never crosses into a file system mounted inside it."""

    def setUp(self):
        self.datadir = os.path.abspath(self.mktemp())
        self.inner = os.path.join(self.datadir, "db", "binlogs")
        os.makedirs(self.inner)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "orchagent-test", self.inner], check=True)
        self.addCleanup(subprocess.run, ["umount", self.inner], check=True)
        for path in (os.path.join(self.inner, "mysql-bin.000001"), os.path.join(self.datadir, "ibdata1"),
                     os.path.join(self.datadir, "db", "t.ibd")):
            with open(path, "w") as f:
                f.write("x")

    def test_device_check_alone_protects_the_mount(self):
        self.assertEqual(empty_directory(self.datadir), [self.inner])
        self.assertEqual(os.listdir(self.inner), ["mysql-bin.000001"])
        self.assertEqual(os.listdir(self.datadir), ["db"])

    @inline
    async def test_delete_mysql_datadir_route(self):
        mysql = StubMySQL(self.datadir)
        config = Config()
        host = make_host(config, None, reactor, mysql, in_thread=thread_runner(reactor))
        client = LiveClient(self, routes_for(storage=storage_api(config, host)), reactor)
        mysql.running = True
        self.assertEqual((await client.get("/api/delete-mysql-datadir"))[0], 409)
        self.assertTrue(os.path.exists(os.path.join(self.datadir, "ibdata1")))
        mysql.running = False
        self.assertEqual(await client.get("/api/delete-mysql-datadir"), (200, True))
        self.assertEqual(os.listdir(self.datadir), ["db"])
        self.assertEqual(os.listdir(self.inner), ["mysql-bin.000001"])
