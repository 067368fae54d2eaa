"""The shaped-link test bed: a private namespace whose loopback runs at a chosen rate, with real agents.

It is what the network seed tests and ``bench/`` build on, so it must hold what it promises:
the rate is the link's (a transfer cannot beat it), agents inside seed through it while the
test talks to them from a thread inside, and nothing of it outlives the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time

from twisted.trial.unittest import SynchronousTestCase

from testbed.agent import free_port, start_agent
from testbed.netns import NetworkNamespace, network_namespace
from testbed.orchestrator import HostAgent, Orchestrator
from testbed.seeding import directory_agent_settings
from tests.support.root import requires_root

MB = 1024 * 1024
RATE_BYTES = 100 * 1000 * 1000 / 8  # 100mbit
SECRET = "test bed secret"


def namespaces() -> list[str]:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout


@requires_root("network namespaces and qdiscs")
class NetworkTestBedTests(SynchronousTestCase):
    """A 100 Mbit/s link between 127.0.0.1 and 127.0.0.2, used by socat and by two real agents."""

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="orchagent-netns-")
        self.addCleanup(shutil.rmtree, self.directory, ignore_errors=True)

    def test_the_link_runs_at_its_rate_and_is_removed_afterwards(self):
        with NetworkNamespace(rate="100mbit") as net:
            name = net.name
            self.assertIn(name, namespaces())
            receiver = net.popen(["socat", "-u", "TCP-LISTEN:5000,bind=127.0.0.2,reuseaddr", "OPEN:/dev/null"])
            time.sleep(0.3)
            started = time.monotonic()
            net.run(["bash", "-c", "head -c 25000000 /dev/zero | socat -u - TCP:127.0.0.2:5000"], check=True)
            seconds = time.monotonic() - started
            receiver.wait(10)
            # 25 MB at 12.5 MB/s: 2 s (the qdisc's burst and the socket buffers allow a little more)
            self.assertGreater(seconds, 0.8 * 25_000_000 / RATE_BYTES, seconds)
        self.assertNotIn(name, namespaces())

    def test_two_agents_seed_through_the_link(self):
        net = network_namespace(self, rate="100mbit")
        source_dir, target_dir = os.path.join(self.directory, "source"), os.path.join(self.directory, "target")
        os.makedirs(os.path.join(source_dir, "db"))
        os.makedirs(target_dir)
        with open(os.path.join(source_dir, "db", "t.ibd"), "wb") as f:
            f.write(os.urandom(20 * MB))
        seed_port = net.call(free_port, "127.0.0.2")
        agents = []
        for address, datadir in (("127.0.0.1", source_dir), ("127.0.0.2", target_dir)):
            directory = os.path.join(self.directory, address)
            settings = directory_agent_settings(directory, datadir, seed_port, SECRET)
            agent = start_agent(settings, address=address, directory=directory, namespace=net)
            self.addCleanup(agent.stop)
            agents.append(HostAgent.of(agent))
        source, target = agents
        orchestrator = Orchestrator()

        def seed() -> dict:
            assert orchestrator.command(target, "receive-mysql-seed-data/1").status == 200
            started = time.monotonic()
            assert orchestrator.command(source, "send-mysql-seed-data/127.0.0.2/1").status == 200
            while not orchestrator.command(target, "seed-command-completed/1").json():
                time.sleep(0.1)
            status = orchestrator.command(target, "seed-status/1").json()
            return {**status, "seconds": time.monotonic() - started}

        status = net.call(seed)
        self.assertEqual((status["State"], status["BytesDone"]), ("succeeded", 20 * MB), status)
        self.assertGreater(status["seconds"], 0.8 * 20 * MB / RATE_BYTES, status)
        with open(os.path.join(source_dir, "db", "t.ibd"), "rb") as a, open(os.path.join(target_dir, "db", "t.ibd"), "rb") as b:
            self.assertEqual(a.read(), b.read())
