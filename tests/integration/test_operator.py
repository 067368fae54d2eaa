"""What an operator sees of a real ``twistd orchagent``: limits, its name, start-up errors, logs."""

import json
import os
import shutil
import socket
import subprocess

from twisted.internet import defer
from twisted.internet.threads import deferToThread

import orchagent
from testbed.agent import REPO, free_port, start_agent, twistd_command
from tests.support.agents import AgentTestCase, plain_http, wait_for
from tests.support.root import requires_root

MAX_COMMANDS = 3


def twistd(config: dict, directory: str, wrapper=()) -> subprocess.CompletedProcess:
    """Run ``twistd orchagent`` with ``config`` to its end (it is expected to refuse to start)."""
    path = os.path.join(directory, "orchagent.conf.json")
    with open(path, "w") as f:
        json.dump(config, f)
    return subprocess.run([*wrapper, *twistd_command(), "--nodaemon", "--pidfile=", "--logfile=-", "orchagent",
                           "--config", path], capture_output=True, text=True, timeout=60, cwd=directory,
                          env={**os.environ, "PYTHONPATH": REPO})


def own_host_names(hostname: str, hosts_line: str, directory: str) -> list[str]:
    """A wrapper giving twistd its own kernel host name and /etc/hosts (new UTS and mount namespaces)."""
    hosts = os.path.join(directory, "hosts")
    with open(hosts, "w") as f:
        f.write(hosts_line + "\n")
    return ["unshare", "--uts", "--mount", "sh", "-c",
            f'mount --bind "$0" /etc/hosts && hostname {hostname} && exec "$@"', hosts]


class CommandLimitTests(AgentTestCase):
    """MaxConcurrentCommands: the cap answers 503 + Retry-After, and the status poll still runs."""

    async def test_custom_command_flood_runs_the_cap_and_refuses_the_rest(self):
        datadir = self.mktemp_dir()
        agent = await self.start({
            "MaxConcurrentCommands": MAX_COMMANDS, "CustomCommands": {"nap": "sleep 3"},
            "MySQLServiceStatusCommand": "true", "MySQLDatadirCommand": f"echo {datadir}",
        })
        client = plain_http()

        async def call(path):
            response = await client.get(agent.url(path))
            return response.code, response.headers.getRawHeaders(b"retry-after"), await response.content()

        flood = [defer.ensureDeferred(call("/api/custom-commands/nap")) for _ in range(MAX_COMMANDS + 5)]
        refused = []
        await wait_for(lambda: sum(d.called for d in flood) == 5, what="the refusals")
        for d in flood:
            if d.called:
                refused.append(await d)
        self.assertEqual(len(refused), 5)
        for code, retry_after, body in refused:
            self.assertEqual((code, retry_after), (503, [b"5"]), body)
            self.assertIn("MaxConcurrentCommands", json.loads(body)["Message"])
        # the status poll's facts have a reserve of their own while the cap is full
        self.assertEqual(await self.get(agent.url("/api/mysql-status")), (200, b"true"))
        code, body = await self.get(agent.url("/api/mysql-datadir-available-space"))
        self.assertEqual(code, 200, body)
        results = await defer.gatherResults(flood)
        self.assertEqual(sorted(code for code, _, _ in results), [200] * MAX_COMMANDS + [503] * 5)
        later = await defer.gatherResults([defer.ensureDeferred(call("/api/custom-commands/nap"))
                                           for _ in range(MAX_COMMANDS)])
        self.assertEqual([code for code, _, _ in later], [200] * MAX_COMMANDS)
        log = agent.log()
        self.assertIn("GET /api/custom-commands/nap from 127.0.0.1 -> 503", log)
        self.assertNotIn(agent.token, log)


class SeedLimitTests(AgentTestCase):
    """MaxConcurrentSeeds: one seed more than allowed, receive or send, is a 503 + Retry-After."""

    async def test_one_seed_more_than_the_cap_is_refused(self):
        datadir = self.mktemp_dir()
        agent = await self.start({
            "MaxConcurrentSeeds": 1,
            "SendSeedDataCommand": "sleep 60; true", "ReceiveSeedDataCommand": "sleep 60; true",
            "MySQLServiceStatusCommand": "false", "MySQLDatadirCommand": f"echo {datadir}",
        })
        client = plain_http()

        async def call(path):
            response = await client.get(agent.url(path))
            return response.code, response.headers.getRawHeaders(b"retry-after"), await response.content()

        sends = await defer.gatherResults([defer.ensureDeferred(call(f"/api/send-mysql-seed-data/127.0.0.9/{n}"))
                                           for n in (1, 2)])
        self.assertEqual(sorted((code, retry) for code, retry, _ in sends), [(200, None), (503, [b"60"])])
        code, retry, body = await call("/api/receive-mysql-seed-data/3")
        self.assertEqual((code, retry), (503, [b"60"]), body)
        self.assertIn("MaxConcurrentSeeds", json.loads(body)["Message"])
        running = [n for n, (code, _, _) in zip((1, 2), sends) if code == 200][0]
        self.assertEqual(await self.get(agent.url(f"/api/abort-seed/{running}")), (200, b"true"))
        code, retry, body = await call("/api/receive-mysql-seed-data/3")
        self.assertEqual(code, 200, body)


class StartupTests(AgentTestCase):
    """A configuration or address problem stops twistd with one line per problem, no usage text."""

    def test_every_bad_key_is_one_line_without_usage_text(self):
        directory = self.mktemp_dir()
        result = twistd({"HTTPPort": 99999, "UseSSL": "yes", "MaxConcurrentCommands": 0,
                         "AgentHostname": "db1"}, directory)
        self.assertNotEqual(result.returncode, 0)
        path = os.path.join(directory, "orchagent.conf.json")
        self.assertEqual(result.stdout, "")
        self.assertEqual(result.stderr.splitlines(), [
            f"{path}: UseSSL: must be true or false, got \"yes\"",
            f"{path}: HTTPPort: port must be from 1 to 65535, got 99999",
            f"{path}: MaxConcurrentCommands: must be at least 1"])

    def test_busy_port_is_one_line(self):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            directory = self.mktemp_dir()
            result = twistd({"HTTPPort": port, "HTTPBindAddress": "127.0.0.1", "AgentHostname": "db1",
                             "StateDirectory": os.path.join(directory, "state")}, directory)
        output = result.stdout + result.stderr
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn("Traceback", output)
        [line] = [line for line in output.splitlines() if str(port) in line]
        self.assertTrue(line.endswith(f"orchagent: cannot listen on 127.0.0.1:{port} (HTTPBindAddress, HTTPPort): "
                                      "[Errno 98] Address already in use"), output)

    def test_version(self):
        result = subprocess.run(twistd_command() + ["orchagent", "--version"], capture_output=True, text=True,
                                timeout=60, env={**os.environ, "PYTHONPATH": REPO})
        self.assertEqual((result.returncode, result.stdout), (0, f"orchagent {orchagent.__version__}\n"))


@requires_root("a namespace to give twistd its own host name and /etc/hosts")
class RegisteredNameTests(AgentTestCase):
    """Without AgentHostname the agent never registers a loopback name (needs root for namespaces)."""

    def setUp(self):
        if not shutil.which("unshare"):
            self.skipTest("needs unshare (util-linux) to give twistd its own host name and /etc/hosts")

    async def test_fqdn_on_loopback_falls_back_to_the_kernel_host_name(self):
        fake, url = self.orchestrator()
        directory = self.mktemp_dir()
        # as on a host whose /etc/hosts maps its name to loopback: getfqdn() answers "localhost"
        wrapper = own_host_names("db7", "127.0.0.1 localhost db7", directory)
        agent = await deferToThread(start_agent, {"AgentHostname": "", "AgentsServer": url,
                                                  "ContinuousPollSeconds": 60},
                                    directory=directory, wrapper=wrapper)
        self.addCleanup(lambda: deferToThread(agent.stop))
        await wait_for(lambda: fake.paths, what="registration")
        self.assertEqual(fake.paths[0], f"/api/submit-agent/db7/{agent.port}/{agent.token}")
        self.assertEqual(await self.get(agent.url("/api/hostname", token=False)), (200, b'"db7"'))
        await wait_for(lambda: "registered with orchestrator" in agent.log(), what="the log line")
        self.assertIn(f"registered with orchestrator {url} as db7 port {agent.port}", agent.log())
        self.assertNotIn("HTTP11ClientFactory", agent.log())  # no factory lines per heartbeat

    def test_no_usable_name_refuses_to_start(self):
        directory = self.mktemp_dir()
        result = twistd({"HTTPPort": free_port()}, directory,
                        wrapper=own_host_names("localhost", "127.0.0.1 localhost", directory))
        self.assertNotEqual(result.returncode, 0)
        [line] = result.stderr.splitlines()
        self.assertTrue(line.startswith("AgentHostname: not set, and this host's names ('localhost' and "
                                        "'localhost') are loopback names"), result.stderr)
