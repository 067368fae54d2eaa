"""Built-in seeds between two real HTTPS agents that authenticate by certificate, with no secret.

Every agent holds a certificate from one CA; ``SeedTransferValidOUs`` names the OU a sending
agent's certificate must carry.  The source's datadir is a plain tree (MySQL reads as stopped
and no snapshot is mounted, so it sends the datadir itself).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from twisted.trial.unittest import SynchronousTestCase

from testbed.agent import free_port, start_agent
from testbed.orchestrator import HostAgent, Orchestrator
from testbed.pki import CertificateAuthority
from testbed.seeding import SOURCE_ADDRESS, TARGET_ADDRESS
from tests.support.seed_trees import build_tree, describe_tree

AGENTS_OU = "mysql-agents"


class SeedCertificateTests(SynchronousTestCase):
    """Agents with TLS certificates seed without a shared secret, and a source without the allowed OU is refused."""

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="orchagent-seed-certificates-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.ca = CertificateAuthority(os.path.join(self.directory, "ca"))
        self.orchestrator = Orchestrator(ca_file=self.ca.cert)
        self.source_datadir = os.path.join(self.directory, "source-data")
        build_tree(self.source_datadir, small_files=50)
        self.target_datadir = os.path.join(self.directory, "target-data")
        os.makedirs(self.target_datadir)
        self.seed_port = free_port(TARGET_ADDRESS)

    def start(self, address: str, datadir: str, ou: str | None) -> HostAgent:
        issued = self.ca.issue(address, ou=ou, ips=(address,))
        agent_dir = tempfile.mkdtemp(dir=self.directory)
        for name in ("snapshots", "mnt"):
            os.makedirs(os.path.join(agent_dir, name))
        agent = start_agent({
            "UseSSL": True, "SSLCertFile": issued.cert, "SSLPrivateKeyFile": issued.key, "SSLCAFile": self.ca.cert,
            "SeedTransferValidOUs": [AGENTS_OU], "SeedTransferPort": self.seed_port,
            "SeedStallTimeoutSeconds": 2,
            "MySQLDatadirCommand": f"echo {datadir}", "MySQLServiceStatusCommand": "false",
            "SnapshotBackend": "btrfs", "BtrfsSnapshotDirectory": os.path.join(agent_dir, "snapshots"),
            "SnapshotMountPoint": os.path.join(agent_dir, "mnt"),
        }, address=address, directory=agent_dir)
        self.addCleanup(agent.stop)
        return HostAgent.of(agent)

    def seed(self, source_ou: str | None) -> tuple[HostAgent, HostAgent]:
        """Starts both agents and seed 1 between them; returns (source, target) once the target is done."""
        target = self.start(TARGET_ADDRESS, self.target_datadir, AGENTS_OU)
        source = self.start(SOURCE_ADDRESS, self.source_datadir, source_ou)
        for agent, command in ((target, "receive-mysql-seed-data/1"),
                               (source, f"send-mysql-seed-data/{TARGET_ADDRESS}/1")):
            call = self.orchestrator.command(agent, command)
            self.assertEqual(call.status, 200, call.body)
        deadline = time.monotonic() + 30
        while not self.orchestrator.command(target, "seed-command-completed/1").json():
            self.assertLess(time.monotonic(), deadline, "the seed did not complete")
            time.sleep(0.1)
        return source, target

    def status(self, agent: HostAgent) -> dict:
        return self.orchestrator.command(agent, "seed-status/1").json()

    def test_agents_with_certificates_seed_without_a_secret(self):
        source, target = self.seed(source_ou=AGENTS_OU)
        self.assertTrue(self.orchestrator.command(target, "seed-command-succeeded/1").json(), self.status(target))
        self.assertEqual(describe_tree(self.target_datadir), describe_tree(self.source_datadir))

    def test_a_source_whose_certificate_lacks_the_ou_is_refused(self):
        source, target = self.seed(source_ou="web-servers")
        received = self.status(target)
        self.assertEqual((received["State"], received["Succeeded"], received["BytesDone"]), ("failed", False, 0))
        self.assertIn("no OU from SeedTransferValidOUs (its OUs: web-servers)", received["Error"])
        self.assertEqual(os.listdir(self.target_datadir), [])
        sent = self.status(source)
        self.assertEqual((sent["State"], sent["Succeeded"]), ("failed", False))
        self.assertIn("SeedTransferValidOUs", sent["Error"])
