"""Is MySQL running? fails closed, on real processes: a real MariaDB, real twistd agents, real /proc.

Whatever ``MySQLServiceStatusCommand`` says (nothing, a failure, a timeout, a service manager the
host does not have), an agent refuses to empty or overwrite the datadir of a running server and
reports it as running.  Each way the agent sees a server by itself is tested alone, and a server
that is really stopped (its pid file stale) still lets the datadir be emptied.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from orchagent.host.liveness import UNKNOWN, Findings, decide
from testbed.agent import REPO, free_port, start_agent
from testbed.mariadb import MariaDBSandbox
from testbed.orchestrator import Orchestrator
from testbed.waiting import alive, wait_for
from tests.support.root import requires_root
from tests.support.sandbox import SandboxPerClass

SECRET = "liveness-test-secret"


def tree(directory: str) -> dict[str, int]:
    """Every file under ``directory`` with its size."""
    found = {}
    for parent, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(parent, name)
            found[os.path.relpath(path, directory)] = os.lstat(path).st_size
    return found


def sleeper(argv0: str = "sleep", **options) -> subprocess.Popen:
    """A real process (``sleep``) under the name ``argv0``, returned once it runs ``sleep``."""
    process = subprocess.Popen(["bash", "-c", f"exec -a {argv0} sleep 60"], **options)
    while not os.readlink(f"/proc/{process.pid}/exe").endswith("/sleep"):
        time.sleep(0.01)
    return process


def stop_process(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait()


class AgentTestCase(SynchronousTestCase):
    """Real agents asked to empty or receive into a datadir, and the assertion that they refused with evidence."""

    sandbox: MariaDBSandbox

    def agent(self, **settings):
        """A real twistd agent for the sandbox (option file only, plus ``settings``)."""
        agent = start_agent({"MySQLConfigFile": self.sandbox.config_file, "SeedTransferSecret": SECRET,
                             "SeedTransferPort": free_port(), **settings})
        self.addCleanup(shutil.rmtree, agent.directory, True)
        self.addCleanup(agent.stop)
        return agent

    def assertRefused(self, agent, *evidence: str) -> None:
        """Every datadir-destroying route answers 409 naming ``evidence``; nothing changed; status is true."""
        before = tree(self.sandbox.datadir)
        for path in ("delete-mysql-datadir", "receive-mysql-seed-data/7", "send-mysql-seed-data/127.0.0.2/7"):
            code, body = Orchestrator().answer(agent, path)
            self.assertEqual(code, 409, (path, body))
            for text in evidence:
                self.assertIn(text, body["Message"], path)
        self.assertEqual(tree(self.sandbox.datadir), before)
        self.assertEqual(Orchestrator().answer(agent, "mysql-status"), (200, True))


@requires_root("the MariaDB sandbox runs its server as root")
class RunningServerTests(SandboxPerClass, AgentTestCase):
    """A running MariaDB's datadir is never emptied nor received into, whatever the status command says."""

    def assertRefusedAndServing(self, agent, *evidence: str) -> None:
        self.assertRefused(agent, "refusing to", "MySQL is running", "mariadbd", *evidence)
        self.assertEqual(self.sandbox.sql("SELECT 1"), "1\n")

    def test_no_status_command(self):
        self.assertRefusedAndServing(self.agent(), f"the pid file {self.sandbox.pid_file} names pid")

    def test_a_failing_status_command(self):
        self.assertRefusedAndServing(self.agent(MySQLServiceStatusCommand="false"),
                                     "MySQLServiceStatusCommand exited 1, but")

    def test_a_status_command_that_times_out(self):
        self.assertRefusedAndServing(self.agent(MySQLServiceStatusCommand="sleep 30", CommandTimeoutSeconds=1),
                                     "MySQLServiceStatusCommand timed out after 1 s, but")

    def test_systemctl_on_a_host_without_systemd(self):
        if os.path.isdir("/run/systemd/system"):
            raise SkipTest("systemd runs on this host: systemctl answers for real")
        if not shutil.which("systemctl"):
            raise SkipTest("no systemctl on this host")
        agent = self.agent(MySQLServiceStatusCommand="systemctl is-active --quiet mariadb")
        self.assertRefusedAndServing(agent, "MySQLServiceStatusCommand cannot reach its service manager")


@requires_root("the MariaDB sandbox runs its server as root")
class DetectionTests(SandboxPerClass, AgentTestCase):
    """Each sign of a server, alone, makes the agent refuse; a stale pid file does not."""

    sandbox_running = False  # started once, so the datadir holds everything a server leaves behind

    def setUp(self):
        self.sandbox.install()  # again after the test that emptied the datadir
        self.assertFalse(self.sandbox.is_running())
        # The sandbox's own status command: it says "stopped" (exit 1) in every test here.
        self._agent = self.agent(MySQLServiceStatusCommand=self.sandbox.service_commands()["status"])
        self.addCleanup(lambda: os.path.exists(self.sandbox.pid_file) and os.unlink(self.sandbox.pid_file))

    def test_pid_file_naming_a_live_server(self):
        server = sleeper("mariadbd")
        self.addCleanup(stop_process, server)
        with open(self.sandbox.pid_file, "w") as f:
            f.write(f"{server.pid}\n")
        self.assertRefused(self._agent, "MySQLServiceStatusCommand exited 1, but",
                           f"the pid file {self.sandbox.pid_file} names pid {server.pid}, a running mariadbd")

    def test_a_process_holding_ibdata1_open_without_pid_file(self):
        ibdata1 = os.path.join(self.sandbox.datadir, "ibdata1")
        with open(ibdata1, "rb") as f:
            holder = sleeper(stdin=f)
        self.addCleanup(stop_process, holder)
        self.assertRefused(self._agent, f"pid {holder.pid} (/usr/bin/sleep) has {ibdata1} open")

    def test_a_real_server_whose_pid_file_was_removed(self):
        self.sandbox.start()
        with open(self.sandbox.pid_file) as f:
            pid = int(f.read())
        os.unlink(self.sandbox.pid_file)
        self.addCleanup(wait_for, lambda: not alive(pid), what=f"pid {pid} to end")
        self.addCleanup(self.sandbox.stop)
        agent = self.agent()  # no status command either
        self.assertRefused(agent, f"pid {pid} (/usr/sbin/mariadbd) has its working directory in the datadir")

    def test_the_port_accepting_connections(self):
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", self.sandbox.port))
            listener.listen()
            self.assertRefused(self._agent, f"port {self.sandbox.port} on 127.0.0.1 accepts connections")

    def test_the_socket_accepting_connections(self):
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(self.sandbox.socket)
            self.addCleanup(os.unlink, self.sandbox.socket)
            listener.listen()
            # No status command: the sandbox's would hang on a socket that never answers.
            self.assertRefused(self.agent(), f"the socket {self.sandbox.socket} accepts connections")

    def test_stale_pid_files_let_the_datadir_be_emptied(self):
        ended = subprocess.Popen(["true"])
        ended.wait()
        other = sleeper()  # a live process that is no server: a pid reused since the server stopped
        self.addCleanup(stop_process, other)
        for pid in (ended.pid, other.pid):
            with open(self.sandbox.pid_file, "w") as f:
                f.write(f"{pid}\n")
            self.assertEqual(Orchestrator().answer(self._agent, "mysql-status"), (200, False))
        self.assertTrue(tree(self.sandbox.datadir))
        self.assertEqual(Orchestrator().answer(self._agent, "delete-mysql-datadir"), (200, True))
        self.assertEqual(tree(self.sandbox.datadir), {})


@requires_root("to run the probe as another user")
class UnprivilegedProbeTests(SynchronousTestCase):
    """A probe that cannot read other users' processes cannot show a server stopped: unknown, never stopped."""

    PROBE = ("import json, sys\n"
             "from orchagent.host.liveness import ServerPlaces, probe\n"
             "findings = probe(ServerPlaces(datadir=sys.argv[1], pid_file=sys.argv[1] + '/x.pid', socket='',\n"
             "                              port=int(sys.argv[2])))\n"
             "print(json.dumps([findings.found, findings.unchecked]))\n")

    def test_as_nobody(self):
        datadir = tempfile.mkdtemp(prefix="orchagent-liveness-")
        self.addCleanup(os.rmdir, datadir)
        # nobody may not be able to read the checkout (a clone in a private directory): a copy it can
        package_root = tempfile.mkdtemp(prefix="orchagent-liveness-package-")
        self.addCleanup(shutil.rmtree, package_root)
        os.chmod(package_root, 0o755)
        shutil.copytree(os.path.join(REPO, "orchagent"), os.path.join(package_root, "orchagent"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3",
                               "-c", self.PROBE, datadir, str(free_port())],
                              env={"PYTHONPATH": package_root, "PATH": "/usr/bin:/bin"}, capture_output=True,
                              text=True, check=True)
        found, unchecked = json.loads(done.stdout)
        self.assertEqual(found, [])
        self.assertIn("Permission denied", unchecked[0])
        self.assertEqual(decide(None, Findings(tuple(found), tuple(unchecked))).state, UNKNOWN)


@requires_root("the MariaDB sandbox runs its server as root")
class DevConfigTests(AgentTestCase):
    """``./run-agent``'s configuration works on a MariaDB of its own under .dev-state, never /var/lib/mysql."""

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="orchagent-liveness-dev-")
        self.addCleanup(shutil.rmtree, self.directory)
        subprocess.run([os.path.join(REPO, "scripts", "dev-mysql-options"), ".dev-state"], cwd=self.directory,
                       check=True)
        with open(os.path.join(REPO, "etc", "orchagent-dev.conf.json")) as f:
            self.settings = json.load(f)
        self.datadir = os.path.join(self.directory, ".dev-state", "mysql")
        self.my_cnf = os.path.join(self.directory, ".dev-state", "my.cnf")

    def dev_agent(self):
        agent = start_agent({**self.settings, "HTTPPort": free_port(),
                             "TokenHintFile": os.path.join(self.directory, "token")}, directory=self.directory)
        self.addCleanup(agent.stop)
        return agent

    def test_empties_its_own_datadir_only(self):
        host = tree("/var/lib/mysql") if os.path.isdir("/var/lib/mysql") else None
        os.makedirs(os.path.join(self.datadir, "mysql"))  # it looks like a datadir (the guard wants one)
        with open(os.path.join(self.datadir, "mysql", "marker"), "w") as f:
            f.write("x")
        agent = self.dev_agent()
        self.assertEqual(Orchestrator().answer(agent, "mysql-status"), (200, False))
        self.assertEqual(Orchestrator().answer(agent, "delete-mysql-datadir"), (200, True))
        self.assertEqual(os.listdir(self.datadir), [])
        if host is not None:
            self.assertEqual(tree("/var/lib/mysql"), host)

    def test_refuses_while_its_server_runs(self):
        base = ["--defaults-file=" + self.my_cnf]
        subprocess.run(["mariadb-install-db", *base, "--auth-root-authentication-method=normal",
                        "--skip-test-db", "--user=root"], check=True, capture_output=True)
        server = subprocess.Popen(["mariadbd", *base, "--user=root"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
        self.addCleanup(server.wait)
        self.addCleanup(server.terminate)
        for _ in range(300):
            if subprocess.run(["mariadb-admin", *base, "ping"], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        agent = self.dev_agent()
        before = tree(self.datadir)
        code, body = Orchestrator().answer(agent, "delete-mysql-datadir")
        self.assertEqual(code, 409, body)
        self.assertIn("MySQLServiceStatusCommand exited 0", body["Message"])
        self.assertEqual(tree(self.datadir), before)
        self.assertEqual(Orchestrator().answer(agent, "mysql-status"), (200, True))
