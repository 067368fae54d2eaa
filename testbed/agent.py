"""Run a real ``twistd -n orchagent`` process for integration tests."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time

import attrs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def malloc_thread_arenas(pid: int = 0) -> int:
    """glibc malloc arenas besides the main one in process ``pid`` (0: this one): each reserves a
    64 MB heap, mostly inaccessible, so it shows as a large ``---p`` mapping (a thread stack's guard
    is a page).  The agent caps them (:mod:`orchagent.allocator`)."""
    heaps = 0
    with open(f"/proc/{pid or 'self'}/maps") as maps:
        for line in maps:
            addresses, permissions = line.split()[:2]
            start, end = (int(x, 16) for x in addresses.split("-"))
            heaps += permissions == "---p" and end - start >= 32 * 1024 * 1024
    return heaps


def twistd_command() -> list[str]:
    """The twistd of the Python running the tests."""
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


@attrs.define
class RunningAgent:
    """A started ``twistd -n orchagent``: its process, address, port, token and directory."""

    process: subprocess.Popen
    address: str
    port: int
    token: str
    directory: str
    scheme: str = "http"

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.address}:{self.port}"

    def url(self, path: str, token: bool = True) -> str:
        if not token:
            return self.base + path
        return self.base + path + ("&" if "?" in path else "?") + "token=" + self.token

    def log(self) -> str:
        with open(os.path.join(self.directory, "agent.log"), errors="replace") as f:
            return f.read()

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, as systemd does; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError("agent did not stop within %s s:\n%s" % (timeout, self.log()))
        return self.process.returncode


def start_agent(settings: dict, *, address: str = "127.0.0.1", directory: str | None = None,
                extra_args=(), env=None, timeout: float = 30, wrapper=(), namespace=None,
                open_files: tuple[int, int] | None = None) -> RunningAgent:
    """Write a config (loopback, free port, token hint file) and wait until the API answers.

    ``wrapper`` goes in front of twistd (e.g. ``unshare`` for a host name of the test's own);
    ``namespace``: a :class:`testbed.netns.NetworkNamespace` to run the agent in;
    ``open_files``: the agent's (soft, hard) RLIMIT_NOFILE, e.g. systemd's default (1024, 524288).
    """
    directory = directory or tempfile.mkdtemp(prefix="orchagent-test-")
    port = settings.get("HTTPPort") or (namespace.call(free_port, address) if namespace else free_port(address))
    config = {
        "HTTPBindAddress": address,
        "HTTPPort": port,
        "AgentHostname": address,
        "StateDirectory": os.path.join(directory, "state"),
        "TokenHintFile": os.path.join(directory, "token"),
        **settings,
    }
    config_path = os.path.join(directory, "orchagent.conf.json")
    with open(config_path, "w") as f:
        json.dump(config, f)
    log = open(os.path.join(directory, "agent.log"), "wb")
    argv = [*wrapper, *twistd_command(), "--nodaemon", "--pidfile=", "--logfile=-", "orchagent",
            "--config", config_path, *extra_args]
    process = subprocess.Popen(
        namespace.argv(argv) if namespace else argv,
        stdout=log, stderr=subprocess.STDOUT, cwd=directory,
        env={**os.environ, "PYTHONPATH": REPO, **(env or {})},
        start_new_session=True,  # a Ctrl-C in the terminal reaches the driver, which stops it in order
        preexec_fn=(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, open_files)) if open_files else None,
    )
    log.close()
    agent = RunningAgent(process, address, port, "", directory,
                         "https" if config.get("UseSSL") else "http")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"agent exited with {process.returncode}:\n{agent.log()}")
        if "orchagent listening on" in agent.log():
            with open(config["TokenHintFile"]) as f:
                agent.token = f.read().strip()
            return agent
        time.sleep(0.05)
    agent.stop()
    raise AssertionError(f"agent did not start within {timeout} s:\n{agent.log()}")
