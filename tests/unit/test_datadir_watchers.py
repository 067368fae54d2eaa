"""The datadir eraser asks its watchers (the seeds) before emptying and tells them after."""

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from orchagent.config import Config
from orchagent.errors import Conflict
from orchagent.graph import make_host
from tests.support.deferreds import Settling
from tests.support.storage import StubMySQL, sync_thread


class RecordingWatcher:
    def __init__(self):
        self.refusing = True
        self.emptied_datadirs = []

    def refuse_emptying(self, datadir):
        if self.refusing:
            raise Conflict(f"seed 1 is receiving into the datadir {datadir}")

    async def emptied(self, datadir):
        self.emptied_datadirs.append(datadir)


class WatcherTests(Settling, SynchronousTestCase):
    """A watcher may refuse an emptying, and hears of every one."""

    def test_refusal_keeps_the_datadir_and_emptying_is_told(self):
        datadir = os.path.abspath(self.mktemp())
        os.makedirs(datadir)
        open(os.path.join(datadir, "ibdata1"), "w").close()
        eraser = make_host(Config(), None, Clock(), StubMySQL(datadir), in_thread=sync_thread).datadir
        watcher = RecordingWatcher()
        eraser.watch(watcher)
        self.fail_with(eraser.delete_content(), Conflict)
        self.assertEqual(os.listdir(datadir), ["ibdata1"])
        watcher.refusing = False
        self.settle(eraser.delete_content())
        self.assertEqual((os.listdir(datadir), watcher.emptied_datadirs), ([], [datadir]))
