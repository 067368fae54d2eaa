"""``./run-demo --hot`` runs (small: a few thousand rows, no rate limit): the target ends replicating
with the source's tables; ``--keep`` keeps the logs; a Ctrl-C in the middle of the seed still
removes everything the demo made."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

from twisted.trial.unittest import SynchronousTestCase

from testbed.agent import REPO
from tests.support.root import requires_root

DEMO = [sys.executable, os.path.join(REPO, "scripts", "seed-demo"), "--hot"]


def demo_directory(output: str) -> str:
    return re.search(r"\(logs in (/\S+)\)", output).group(1)


def leftovers(directory: str) -> str:
    """Processes still running from the demo's directory (its servers, agents or backup)."""
    return subprocess.run(["pgrep", "-a", "-f", directory], capture_output=True, text=True).stdout


@requires_root("MariaDB sandboxes and a root-only HotBackupDefaultsFile")
class HotDemoTests(SynchronousTestCase):

    def test_the_hot_demo_ends_replicating_and_removes_what_it_made(self):
        done = subprocess.run([*DEMO, "--rows", "5000", "--rate-mb", "0", "--poll-seconds", "0.5", "--keep"],
                              capture_output=True, text=True, timeout=120)
        output = done.stdout
        self.assertEqual(done.returncode, 0, output + done.stderr)
        self.assertRegex(output, r"lvs-snapshots on the source lists hot-backup at /hotbackup/")
        self.assertRegex(output, r"orchestrator: Copied \d+/\d+ bytes")
        self.assertRegex(output, r"mysql-start on the target configured replication: replicating from "
                                 r"repl@127\.0\.0\.1:\d+ at GTID 0-1-\d+")
        self.assertRegex(output, r"SHOW SLAVE STATUS: replicating from 127\.0\.0\.1:\d+, Slave_IO_Running Yes, "
                                 r"Slave_SQL_Running Yes, Seconds_Behind_Master \d+")
        self.assertIn("shop.orders          CHECKSUM", output)
        self.assertNotIn("DIFFERS", output)
        self.assertIn("the target replicates from the source with all 2 tables identical", output)
        directory = demo_directory(output)
        self.assertFalse(os.path.exists(directory))
        self.assertEqual(leftovers(directory), "")
        kept = re.search(r"logs kept in (/\S+)", output).group(1)
        self.addCleanup(shutil.rmtree, kept, True)
        logs = {os.path.relpath(os.path.join(parent, name), kept)
                for parent, _, names in os.walk(kept) for name in names}
        self.assertTrue({"source/error.log", "target/error.log"} <= logs, logs)
        self.assertEqual(len([name for name in logs if name.endswith("/agent.log")]), 2, logs)

    def test_ctrl_c_during_the_seed_removes_everything(self):
        # in its own process group, as a terminal's foreground job; Ctrl-C signals the whole group
        demo = subprocess.Popen([*DEMO, "--rows", "20000", "--rate-mb", "1", "--poll-seconds", "0.5"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.addCleanup(lambda: demo.poll() is None and os.killpg(demo.pid, signal.SIGKILL))
        output = ""
        deadline = time.monotonic() + 60
        while "orchestrator: Copied" not in output and time.monotonic() < deadline:
            line = demo.stdout.readline()
            if not line:
                break
            output += line
        self.assertIn("orchestrator: Copied", output)
        os.killpg(demo.pid, signal.SIGINT)
        output += demo.stdout.read()
        self.assertEqual(demo.wait(timeout=60), 130, output)
        self.assertIn("interrupted", output)
        self.assertIn("cleaning up", output)
        directory = demo_directory(output)
        self.assertFalse(os.path.exists(directory))
        self.assertEqual(leftovers(directory), "")
