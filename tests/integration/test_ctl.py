"""orchagent-ctl against real agents: every subcommand, run as the operator runs it (a process).

``AgentTests`` use one agent whose service commands touch a file (no MariaDB): status, mysql
start/stop, abort and seed-status of unknown seeds, and the failures an operator meets
(unreachable agent, wrong token), each one line without a traceback or the token.  The agent
reads a fixed token from ``TokenFile`` (and one whose TokenFile others can read does not start).
``TLSTests``: HTTPS verified against ``--ca``, a client certificate for ``UseMutualTLS``.

``SeedTests`` seed between two real agents and MariaDB servers as in test_seed_e2e, through a
:class:`SlowLink` (16 MB/s) and 64 MB of incompressible data so progress is visible: on a real
terminal (a pty) the bar is redrawn with ``\\r`` and a percentage and the seed ends with MariaDB
running on the target, while ``seed-status --follow`` (not a terminal) prints one line per change;
Ctrl-C (the ``\\x03`` byte typed into the pty) aborts the seed on both agents, which then report
it completed and not succeeded.  Needs root (btrfs loop device).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import termios
import time

from twisted.trial.unittest import SynchronousTestCase

from testbed.agent import REPO, free_port, start_agent, twistd_command
from testbed.orchestrator import HostAgent, Orchestrator
from testbed.pki import CertificateAuthority
from testbed.seeding import SOURCE_ADDRESS, TARGET_ADDRESS, SeedTarget, table_checksums, transfer_settings
from tests.support.linked_seeds import LinkedSeedTestCase
from tests.support.root import requires_root

CTL = [sys.executable, "-m", "orchagent.ctl"]
FIXED_TOKEN = "ctl-test-fixed-token-0123456789"
MB = 1024 * 1024


def ctl(*args: str, token: str | None = FIXED_TOKEN, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": REPO}
    env.pop("ORCHAGENT_TOKEN", None)
    if token is not None:
        env["ORCHAGENT_TOKEN"] = token
    return subprocess.run(CTL + list(args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=timeout)


def write_token_file(directory: str) -> str:
    path = os.path.join(directory, "fixed-token")
    with open(path, "w") as f:
        f.write(FIXED_TOKEN + "\n")
    os.chmod(path, 0o600)
    return path


class AgentTests(SynchronousTestCase):
    """orchagent-ctl against a real agent: status, MySQL start/stop, token handling and one-line errors."""

    @classmethod
    def setUpClass(cls):
        cls.directory = tempfile.mkdtemp(prefix="orchagent-ctl-")
        token_file = write_token_file(cls.directory)
        flag = os.path.join(cls.directory, "mysql-running")
        cls.agent = start_agent({
            "TokenFile": token_file,
            "MySQLServiceStartCommand": f"touch {flag}", "MySQLServiceStopCommand": f"rm -f {flag}",
            "MySQLServiceStatusCommand": f"test -e {flag}", "MySQLDatadirCommand": f"echo {cls.directory}",
            "MySQLPortCommand": "echo 3306", "MySQLErrorLogFile": os.path.join(cls.directory, "error.log"),
        })
        with open(os.path.join(cls.directory, "error.log"), "w") as f:
            f.write("2026-11-29  0:00:01 0 [Note] first line\n2026-11-29  0:00:02 0 [ERROR] the last line\n")
        cls.host = f"127.0.0.1:{cls.agent.port}"

    @classmethod
    def tearDownClass(cls):
        cls.agent.stop()
        shutil.rmtree(cls.directory, ignore_errors=True)

    def assertOneLineFailure(self, result: subprocess.CompletedProcess, *expected: str):
        self.assertEqual(result.returncode, 1, result)
        lines = result.stderr.splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertTrue(lines[0].startswith("orchagent-ctl: "), lines)
        for text in expected:
            self.assertIn(text, lines[0])
        self.assertNotIn(FIXED_TOKEN, result.stdout + result.stderr)

    def test_the_agent_serves_the_fixed_token_of_token_file(self):
        self.assertEqual(self.agent.token, FIXED_TOKEN)  # the hint file holds it too

    def test_status_at_a_glance_and_as_json(self):
        result = ctl("status", self.host)
        self.assertEqual(result.returncode, 0, result)
        out = result.stdout
        self.assertRegex(out, rf"{self.host}  127.0.0.1  \(orchagent \d+\.\d+\.\d+\)")
        self.assertRegex(out, r"orchestrator: +OK")
        self.assertRegex(out, r"seeds: +none running\n")
        self.assertRegex(out, r"MySQL: +not running, port 3306")
        self.assertRegex(out, r"datadir: +[\d.]+ (B|KiB|MiB) used, [\d.]+ [KMGT]iB free")
        self.assertIn("[ERROR] the last line", out)

        result = ctl("--json", "status", self.host, self.host)
        self.assertEqual(result.returncode, 0, result)
        documents = [json.loads(line) for line in result.stdout.splitlines()]
        self.assertEqual(len(documents), 2)
        self.assertEqual((documents[0]["Host"], documents[0]["MySQLPort"], documents[0]["MySQLRunning"]),
                         (self.host, 3306, False))

    def test_an_agent_with_a_readable_token_file_does_not_start(self):
        path = os.path.join(self.directory, "shared-token")
        with open(path, "w") as f:
            f.write(FIXED_TOKEN)
        os.chmod(path, 0o644)
        config = os.path.join(self.directory, "bad-token.conf.json")
        with open(config, "w") as f:
            json.dump({"TokenFile": path, "StateDirectory": os.path.join(self.directory, "state")}, f)
        result = subprocess.run(twistd_command() + ["--nodaemon", "--pidfile=", "orchagent", "--config", config],
                                capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": REPO})
        self.assertNotEqual(result.returncode, 0)
        self.assertIn(f"TokenFile {path!r}: has mode 0644; others may not read or change it (chmod 600)",
                      result.stdout + result.stderr)
        self.assertNotIn("Traceback", result.stdout + result.stderr)
        self.assertNotIn(FIXED_TOKEN, result.stdout + result.stderr)

    def test_mysql_start_and_stop(self):
        result = ctl("mysql", "start", self.host)
        self.assertEqual((result.returncode, result.stdout), (0, f"MySQL on {self.host}: running\n"), result)
        result = ctl("mysql", "stop", self.host, "--json")
        self.assertEqual(result.returncode, 0, result)
        self.assertEqual(json.loads(result.stdout), {"Host": self.host, "MySQLRunning": False})

    def test_unknown_seed(self):
        self.assertOneLineFailure(ctl("seed-status", self.host, "42"), "seed-status/42 failed (HTTP 404)", "no seed 42")
        self.assertOneLineFailure(ctl("abort", self.host, "42"), "abort-seed/42 failed (HTTP 404)")

    def test_wrong_or_missing_token_is_one_line(self):
        result = ctl("status", self.host, token="wrong-token-" + FIXED_TOKEN[::-1])
        self.assertOneLineFailure(result, "the agent refused the token", "HTTP 401")
        self.assertNotIn(FIXED_TOKEN[::-1], result.stderr)
        self.assertOneLineFailure(ctl("status", self.host, token=None), "no token was given")

    def test_unreachable_agent_is_one_line(self):
        port = free_port()
        self.assertOneLineFailure(ctl("snapshots", f"127.0.0.1:{port}"), f"127.0.0.1:{port}: connection refused")

    def test_bad_usage_exits_2(self):
        result = ctl("status", "not a host")
        self.assertEqual(result.returncode, 2, result)
        self.assertIn("must be a hostname or an IP address", result.stderr)


class TLSTests(SynchronousTestCase):
    """--https verifies the agent against --ca and presents --cert/--key to an agent with UseMutualTLS."""

    @classmethod
    def setUpClass(cls):
        cls.directory = tempfile.mkdtemp(prefix="orchagent-ctl-tls-")
        cls.ca = CertificateAuthority(os.path.join(cls.directory, "ca"))
        server = cls.ca.issue("agent")
        cls.client = cls.ca.issue("operator", ou="dba")
        cls.agent = start_agent({"TokenFile": write_token_file(cls.directory), "UseSSL": True,
                                 "SSLCertFile": server.cert, "SSLPrivateKeyFile": server.key, "SSLCAFile": cls.ca.cert,
                                 "UseMutualTLS": True, "SSLValidOUs": ["dba"], "MySQLServiceStatusCommand": "false"})
        cls.host = f"127.0.0.1:{cls.agent.port}"

    @classmethod
    def tearDownClass(cls):
        cls.agent.stop()
        shutil.rmtree(cls.directory, ignore_errors=True)

    def test_verified_both_ways(self):
        result = ctl("--https", "--ca", self.ca.cert, "--cert", self.client.cert, "--key", self.client.key,
                     "--json", "status", self.host)
        self.assertEqual(result.returncode, 0, result)
        self.assertEqual(json.loads(result.stdout)["MySQLRunning"], False)

    def test_no_client_certificate(self):
        result = ctl("--https", "--ca", self.ca.cert, "snapshots", self.host)
        self.assertOneLineFailure(result, "the agent wants a client certificate", "(--cert and --key)")

    def test_untrusted_agent_certificate(self):
        stranger = CertificateAuthority(os.path.join(self.directory, "stranger"), "another CA")
        result = ctl("--https", "--ca", stranger.cert, "--cert", self.client.cert, "--key", self.client.key,
                     "status", self.host)
        self.assertOneLineFailure(result, f"{self.host}: TLS handshake failed", "check --https, --ca")

    assertOneLineFailure = AgentTests.assertOneLineFailure


class PtyProcess:
    """A process on the slave side of a new pty, as its controlling terminal (so ^C is SIGINT)."""

    def __init__(self, argv: list[str], env: dict):
        self.master, slave = os.openpty()
        self.output = b""

        def controlling_terminal():  # runs after setsid(): the pty becomes this session's terminal
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.process = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                        start_new_session=True, preexec_fn=controlling_terminal)
        os.close(slave)

    def read_until(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.output.decode(errors="replace"))
            if match:
                return match
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} within {timeout} s in:\n{self.output!r}")
            self._read(0.1)

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            self._read(0.1)
        self._read(0)
        if self.process.poll() is None:
            self.process.kill()
            raise AssertionError(f"orchagent-ctl did not end within {timeout} s:\n{self.output!r}")
        return self.process.returncode

    def _read(self, timeout: float) -> None:
        while select.select([self.master], [], [], timeout)[0]:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the other side is closed
                return
            if not data:
                return
            self.output += data
            timeout = 0

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        os.close(self.master)


@requires_root("a btrfs loop device for the source's snapshot; MariaDB sandboxes")
class SeedTests(LinkedSeedTestCase):
    """orchagent-ctl seed between real agents: a progress bar on a terminal, and Ctrl-C aborts on both sides."""

    source_options = {"size_mb": 300, "rows": 1000, "ballast_bytes": 64 * MB}

    @classmethod
    def build(cls):
        cls.token_file = write_token_file(cls.directory)
        cls.source_agent = cls.start_agent({**cls.source.settings(), **transfer_settings(cls.link.port, "ctl secret"),
                                            "TokenFile": cls.token_file}, SOURCE_ADDRESS)
        assert Orchestrator().command(cls.source_agent, "create-snapshot").status == 200

    def setUp(self):
        workdir = tempfile.mkdtemp(dir=self.directory)
        self.target = SeedTarget(os.path.join(workdir, "target"), install=True)
        self.addCleanup(lambda: self.target.sandbox.is_running() and self.target.sandbox.stop())
        agent = start_agent({**self.target.settings(), **transfer_settings(self.target_seed_port, "ctl secret"),
                             "TokenFile": self.token_file},
                            address=TARGET_ADDRESS, directory=tempfile.mkdtemp(dir=workdir))
        self.addCleanup(agent.stop)
        self.target_agent = HostAgent.of(agent)
        self.addCleanup(Orchestrator().command, self.source_agent, "umount")  # even when a test fails half-way
        self.source_host = f"{SOURCE_ADDRESS}:{self.source_agent.port}"
        self.target_host = f"{TARGET_ADDRESS}:{self.target_agent.port}"

    def seed_on_a_terminal(self, seed_id: int) -> PtyProcess:
        env = {**os.environ, "PYTHONPATH": REPO, "TERM": "xterm", "COLUMNS": "120"}
        env.pop("ORCHAGENT_TOKEN", None)
        terminal = PtyProcess(CTL + ["--token-file", self.token_file, "seed", self.source_host, self.target_host,
                                     "--seed-id", str(seed_id), "--wait-before-send", "0.5",
                                     "--poll-seconds", "2", "--interval", "0.3"], env)
        self.addCleanup(terminal.close)
        return terminal

    def seed_status(self, host: HostAgent, seed_id: int) -> dict:
        call = Orchestrator().command(host, f"seed-status/{seed_id}")
        self.assertEqual(call.status, 200, call)
        return call.json()

    def test_seed_with_a_progress_bar_on_a_terminal(self):
        terminal = self.seed_on_a_terminal(31)
        terminal.read_until(r"\] +([1-9]\d?)% ", timeout=60)  # bytes are arriving
        env = {**os.environ, "PYTHONPATH": REPO}
        follower = subprocess.Popen(CTL + ["--token-file", self.token_file, "seed-status", self.target_host, "31",
                                           "--follow", "--interval", "0.3"], env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        self.assertEqual(terminal.wait(120), 0, terminal.output)
        output = terminal.output.decode()
        # the bar was redrawn in place, with a percentage, at least once before the end
        redraws = re.findall(r"\r\x1b\[K\[[#.]+\] +(\d+)%", output)
        self.assertGreater(len(redraws), 2, output)
        self.assertTrue(any(0 < int(percent) < 100 for percent in redraws), redraws)
        self.assertIn("Mounting logical volume", output)  # orchestrator's steps, printed above the bar
        self.assertRegex(output, r"seed 31 succeeded: [\d.]+ MiB from 127.0.0.1:\d+ to 127.0.0.2:\d+")
        self.assertNotIn(FIXED_TOKEN, output)
        self.assertTrue(self.target.sandbox.is_running())
        self.assertEqual(table_checksums(self.target.sandbox), self.source.checksums)
        self.assertTrue(self.seed_status(self.target_agent, 31)["Succeeded"])

        # a follower (not a terminal): one line per change, then the end, exit 0
        out, err = follower.communicate(timeout=30)
        self.assertEqual(follower.returncode, 0, (out, err))
        lines = out.splitlines()
        self.assertNotIn("\r", out)
        self.assertGreater(len(lines), 2, out)
        self.assertRegex(lines[0], r"^ *\d+%  [\d.]+ [KM]iB of [\d.]+ MiB  [\d.]+ [KM]iB/s  ETA \d+:\d\d  "
                                   r"([\d.]+x compressed  )?\(receive running\)$")
        self.assertRegex(lines[-2], r"^100%  .* \(receive succeeded\)$")
        self.assertEqual(lines[-1], f"seed 31 on {self.target_host}: succeeded")

        # the other subcommands, on the hosts the seed left behind
        result = ctl("seed-status", self.target_host, "31")
        self.assertEqual(result.returncode, 0, result)
        self.assertIn(f"seed 31 on {self.target_host}: receive (built-in), peer", result.stdout)
        self.assertIn("100%", result.stdout)
        result = ctl("snapshots", self.source_host)
        self.assertEqual(result.returncode, 0, result)
        self.assertRegex(result.stdout, r"1 snapshot\(s\)\n  mysql-snap-\S+  /")
        result = ctl("status", self.source_host, self.target_host)
        self.assertEqual(result.returncode, 0, result)
        self.assertRegex(result.stdout, r"MySQL: +running")
        self.assertRegex(result.stdout, r"snapshots: +1: mysql-snap-")
        self.assertRegex(result.stdout, r"seeds: +none running; latest: 31 \(send\) succeeded")
        self.assertRegex(result.stdout, r"seeds: +none running; latest: 31 \(receive\) succeeded")
        # orchestrator's refusal, for scripts: MySQL now runs on the target
        result = ctl("--json", "seed", self.source_host, self.target_host, "--seed-id", "33")
        self.assertEqual(result.returncode, 1, result)
        events = [json.loads(line) for line in result.stdout.splitlines()]
        self.assertEqual(events[-1], {"event": "result", "ok": False, "text": (
            "seed 33 failed: MySQL is running on target host. Cowardly refusing to proceeed. "
            "Please stop the MySQL service")})
        self.assertEqual([e["text"] for e in events if e["event"] == "step"][-1],
                         f"Checking MySQL status on target {TARGET_ADDRESS}")
        self.assertTrue(self.target.sandbox.is_running())

        result = ctl("mysql", "stop", self.target_host)
        self.assertEqual((result.returncode, result.stdout), (0, f"MySQL on {self.target_host}: not running\n"))
        self.assertFalse(self.target.sandbox.is_running())

    def test_ctrl_c_aborts_the_seed_on_both_agents(self):
        terminal = self.seed_on_a_terminal(32)
        terminal.read_until(r"\] +([1-9]\d?)% ", timeout=60)  # bytes are arriving
        result = ctl("--json", "status", self.target_host)
        [running] = json.loads(result.stdout)["RunningSeeds"]
        self.assertEqual((running["SeedId"], running["Role"], running["State"]), (32, "receive", "running"))
        terminal.type(b"\x03")
        self.assertEqual(terminal.wait(60), 130, terminal.output)
        output = terminal.output.decode()
        self.assertIn("seed 32 interrupted (Ctrl-C); both agents report the seed ended", output)
        for host in (self.target_agent, self.source_agent):
            status = self.seed_status(host, 32)
            self.assertEqual((status["Completed"], status["Succeeded"]), (True, False), status)
        self.assertFalse(Orchestrator().get_agent(self.source_agent).MountPoint["IsMounted"])
        self.assertFalse(self.target.sandbox.is_running())
