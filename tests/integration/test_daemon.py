"""A real ``twistd -n orchagent`` process: registration, core routes, TLS, clean shutdown."""

import json
import os
import stat
import subprocess

from treq.client import HTTPClient
from twisted.internet import reactor, ssl
from twisted.internet.threads import deferToThread
from twisted.web.client import Agent, ResponseFailed

from orchagent import tls
from orchagent.config import Config
from testbed.agent import REPO, twistd_command
from testbed.pki import CertificateAuthority
from testbed.waiting import alive
from tests.support.agents import AgentTestCase, one_shot_pool, plain_http, wait_for


class DaemonTests(AgentTestCase):
    """A real twistd registers and pings, serves the core routes, stops cleanly on SIGTERM and refuses bad config."""

    async def test_registers_pings_and_serves_core_routes(self):
        fake, url = self.orchestrator()
        agent = await self.start({
            "AgentsServer": url, "ContinuousPollSeconds": 1,
            "CustomCommands": {"greet": "echo hello from $(hostname -s) >&1", "fail": "echo oops >&2; exit 3"},
        })
        await wait_for(lambda: "/api/agent-ping" in fake.paths, what="a ping")
        self.assertEqual(fake.paths[0], f"/api/submit-agent/127.0.0.1/{agent.port}/{agent.token}")
        self.assertRegex(agent.token, r"\A[0-9a-f]{64}\Z")
        hint = os.path.join(agent.directory, "token")
        self.assertEqual(stat.S_IMODE(os.stat(hint).st_mode), 0o600)

        self.assertEqual(await self.get(agent.url("/api/hostname", token=False)), (200, b'"127.0.0.1"'))
        self.assertEqual(await self.get(agent.url("/api/status", token=False)), (200, b'"OK"'))
        code, body = await self.get(agent.url("/api/custom-commands/greet"))
        self.assertEqual(code, 200)
        self.assertEqual(json.loads(body)["Code"], "OK")
        self.assertRegex(json.loads(body)["Message"], r"^hello from \S+\n$")
        code, body = await self.get(agent.url("/api/custom-commands/fail"))
        self.assertEqual(code, 502)
        self.assertIn("exit status 3", json.loads(body)["Message"])
        self.assertIn("oops", json.loads(body)["Message"])
        code, body = await self.get(agent.url("/api/custom-commands/nosuch"))
        self.assertEqual(code, 404)
        self.assertIn("fail, greet", json.loads(body)["Message"])
        code, body = await self.get(agent.url("/api/custom-commands/greet", token=False))
        self.assertEqual(code, 401)
        self.assertNotIn(agent.token, agent.log(), "the token must never be logged at INFO")

    async def test_sigterm_kills_running_commands_and_exits_zero(self):
        marker = os.path.join(self.mktemp_dir(), "pids")
        agent = await self.start({"CustomCommands": {
            "hang": f"sleep 300 & echo $! > {marker}; echo $$ >> {marker}; wait"}})
        request = plain_http().get(agent.url("/api/custom-commands/hang"))
        request.addErrback(lambda failure: failure.trap(ResponseFailed))
        await wait_for(lambda: os.path.exists(marker) and len(open(marker).read().split()) == 2,
                       what="the command to start")
        pids = [int(p) for p in open(marker).read().split()]
        code = await deferToThread(agent.stop)
        self.assertEqual(code, 0, agent.log())
        self.assertEqual([pid for pid in pids if alive(pid)], [], "the whole group must be gone")
        await request

    def test_bad_config_stops_at_start_naming_file_and_key(self):
        path = os.path.join(self.mktemp_dir(), "bad.conf.json")
        with open(path, "w") as f:
            json.dump({"HTTPPort": 99999}, f)
        result = subprocess.run(twistd_command() + ["--nodaemon", "--pidfile=", "orchagent", "--config", path],
                                capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": REPO})
        self.assertNotEqual(result.returncode, 0)
        self.assertIn(f"{path}: HTTPPort: port must be from 1 to 65535, got 99999", result.stdout + result.stderr)
        self.assertNotIn("Traceback", result.stdout + result.stderr)


class TLSTests(AgentTestCase):
    """HTTPS with a verifiable certificate, mutual TLS limited to allowed OUs, and a verified orchestrator."""

    def setUp(self):
        self.ca = CertificateAuthority(self.mktemp_dir())
        self.server = self.ca.issue("agent")

    def client(self, cert=None, ca=None):
        """An HTTPS client trusting ``ca`` (default: the test CA), presenting ``cert`` if given."""
        config = Config(ssl_ca_file=ca or self.ca.cert, ssl_cert_file=cert.cert if cert else "",
                        ssl_private_key_file=cert.key if cert else "")
        return HTTPClient(Agent(reactor, contextFactory=tls.ClientPolicy(config), pool=one_shot_pool()))

    def tls_settings(self, **extra):
        return {"UseSSL": True, "SSLCertFile": self.server.cert, "SSLPrivateKeyFile": self.server.key,
                "SSLCAFile": self.ca.cert, **extra}

    async def test_https_serves_with_a_verifiable_certificate(self):
        agent = await self.start(self.tls_settings())
        self.assertEqual(await self.get(agent.url("/api/hostname", token=False), self.client()),
                         (200, b'"127.0.0.1"'))
        stranger = CertificateAuthority(self.mktemp_dir(), "another CA")
        with self.assertRaises(Exception):  # the agent's cert does not chain to another CA
            await self.get(agent.url("/api/hostname", token=False), self.client(ca=stranger.cert))

    async def test_mutual_tls_requires_a_certificate_with_an_allowed_ou(self):
        agent = await self.start(self.tls_settings(UseMutualTLS=True, SSLValidOUs=["dba"]))
        self.assertEqual(await self.get(agent.url("/api/custom-commands/x"), self.client()),
                         (401, b"No TLS\n"))
        # the status endpoint is exempt, and the exemption is not a substring match
        self.assertEqual(await self.get(agent.url("/api/status", token=False), self.client()), (200, b'"OK"'))
        self.assertEqual(await self.get(agent.url("/api/custom-commands/x?x=/api/status"), self.client()),
                         (401, b"No TLS\n"))
        wrong = self.ca.issue("intruder", ou="web")
        self.assertEqual(await self.get(agent.url("/api/custom-commands/x"), self.client(wrong)),
                         (401, b"Invalid OU\n"))
        right = self.ca.issue("orchestrator", ou="dba")
        code, _ = await self.get(agent.url("/api/custom-commands/x"), self.client(right))
        self.assertEqual(code, 404)  # authorized: the unknown custom command is the only problem
        forged = CertificateAuthority(self.mktemp_dir(), "forger").issue("forged", ou="dba")
        with self.assertRaises(Exception):  # a certificate from an unknown CA fails the handshake
            await self.get(agent.url("/api/custom-commands/x"), self.client(forged))

    def orchestrator_tls(self, issued):
        with open(issued.cert, "rb") as c, open(issued.key, "rb") as k:
            return ssl.PrivateCertificate.loadPEM(c.read() + k.read()).options()

    async def test_registration_verifies_orchestrator_certificate(self):
        fake, url = self.orchestrator(self.orchestrator_tls(self.ca.issue("orchestrator")))
        agent = await self.start(self.tls_settings(AgentsServer=url, ContinuousPollSeconds=1))
        await wait_for(lambda: fake.paths, what="registration over verified TLS")
        self.assertEqual(fake.paths[0], f"/api/submit-agent/127.0.0.1/{agent.port}/{agent.token}")

        impostor_ca = CertificateAuthority(self.mktemp_dir(), "impostor")
        impostor, url = self.orchestrator(self.orchestrator_tls(impostor_ca.issue("orchestrator")))
        agent = await self.start(self.tls_settings(AgentsServer=url, ContinuousPollSeconds=1))
        await wait_for(lambda: "submit-agent to" in agent.log(), what="a failed registration")
        self.assertEqual(impostor.paths, [])
        self.assertNotIn(agent.token, agent.log())

        agent = await self.start(self.tls_settings(AgentsServer=url, SSLSkipVerify=True, ContinuousPollSeconds=1))
        await wait_for(lambda: impostor.paths, what="registration with SSLSkipVerify")
