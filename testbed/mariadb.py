"""A throw-away MariaDB server for integration tests and demos.

    sandbox = MariaDBSandbox(tempfile.mkdtemp(), log_bin=True)
    sandbox.start()                      # installs the datadir on first use, waits for connections
    sandbox.sql("CREATE DATABASE d")     # runs through the mariadb client over the socket
    sandbox.stop()

Everything (datadir, socket, pid file, error log, my.cnf) lives under one directory.  The server
runs as root on 127.0.0.1 and a free port.  ``service_commands()`` gives shell commands that
start, stop and check this server, ready to be used as ``MySQLServiceStartCommand`` and friends;
``config_values()`` gives the matching agent configuration.  Starting costs about a second:
share one sandbox per test class or module.
"""

from __future__ import annotations

import os
import shlex
import subprocess

from testbed.agent import free_port

INSTALL_FLAGS = ("--no-defaults", "--auth-root-authentication-method=normal", "--skip-test-db", "--user=root")


class MariaDBSandbox:
    """A MariaDB server of its own (datadir, socket, port, option file) under ``directory``."""

    def __init__(self, directory: str, *, port: int | None = None, log_bin: bool = False,
                 extra_options: dict[str, str] | None = None):
        self.directory = os.path.abspath(directory)
        self.datadir = os.path.join(self.directory, "data")
        self.socket = os.path.join(self.directory, "mysqld.sock")
        self.pid_file = os.path.join(self.directory, "mysqld.pid")
        self.error_log = os.path.join(self.directory, "error.log")
        self.config_file = os.path.join(self.directory, "my.cnf")
        self.port = port or free_port()
        options = {
            "datadir": self.datadir, "port": str(self.port), "bind-address": "127.0.0.1",
            "socket": self.socket, "pid-file": self.pid_file, "log_error": self.error_log,
            "server_id": "1", "skip-name-resolve": "", "innodb_buffer_pool_size": "16M",
            "innodb_log_file_size": "8M",
        }
        if log_bin:
            options["log_bin"] = "mysql-bin"
        options.update(extra_options or {})
        self.options = options
        os.makedirs(self.directory, exist_ok=True)
        self.write_config()

    # -- set-up ------------------------------------------------------------------------------

    def write_config(self) -> None:
        lines = ["[mysqld]"] + [f"{name}={value}" if value else name for name, value in self.options.items()]
        with open(self.config_file, "w") as f:
            f.write("\n".join(lines) + "\n")

    def install(self) -> None:
        """Create the system tables (once; a no-op when the datadir exists)."""
        if os.path.isdir(os.path.join(self.datadir, "mysql")):
            return
        done = subprocess.run(["mariadb-install-db", *INSTALL_FLAGS, f"--datadir={self.datadir}"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
        if done.returncode != 0:  # say why: it has failed now and then on a heavily loaded machine
            raise RuntimeError(f"mariadb-install-db for {self.datadir} failed (exit {done.returncode}):\n"
                               f"{done.stdout[-3000:]}")

    # -- the server --------------------------------------------------------------------------

    def service_commands(self) -> dict[str, str]:
        """Shell commands for ``start``, ``stop`` and ``status``, as an init system would offer.

        ``start`` returns once the server accepts connections, ``stop`` once it has exited,
        ``status`` exits 0 only while it answers.  The server runs in its own session with its
        output closed, so a process runner waiting on the start command's pipes is not held.
        """
        admin = shlex.join(["mariadb-admin", "--no-defaults", f"--socket={self.socket}", "--user=root"])
        server = shlex.join(["mariadbd", f"--defaults-file={self.config_file}", "--user=root"])
        pid_file = shlex.quote(self.pid_file)
        wait = "for i in $(seq 300); do {test} && exit 0; sleep 0.1; done; exit 1"
        return {
            "status": f"{admin} ping >/dev/null 2>&1",
            "start": (f"setsid {server} </dev/null >/dev/null 2>&1 & "
                      + wait.format(test=f"{admin} ping >/dev/null 2>&1")),
            "stop": (f"{admin} shutdown >/dev/null 2>&1; "
                     + wait.format(test=f"! test -e {pid_file}")),
        }

    def config_values(self) -> dict[str, str]:
        """The agent configuration (JSON keys) that controls and reads this server."""
        commands = self.service_commands()
        return {
            "MySQLServiceStartCommand": commands["start"],
            "MySQLServiceStopCommand": commands["stop"],
            "MySQLServiceStatusCommand": commands["status"],
            "MySQLConfigFile": self.config_file,
            "MySQLClientCommand": shlex.join([*self.client_argv(), "--local-infile=0"]),
        }

    def start(self) -> None:
        self.install()
        self._shell("start")

    def stop(self) -> None:
        self._shell("stop")

    def is_running(self) -> bool:
        return subprocess.run(["bash", "-c", self.service_commands()["status"]]).returncode == 0

    def client_argv(self) -> list[str]:
        return ["mariadb", "--no-defaults", f"--socket={self.socket}", "--user=root"]

    def sql(self, statements: str) -> str:
        """Run SQL; the tab-separated rows without column names."""
        done = subprocess.run([*self.client_argv(), "--batch", "--skip-column-names", "-e", statements],
                              check=True, capture_output=True, text=True)
        return done.stdout

    def _shell(self, action: str) -> None:
        done = subprocess.run(["bash", "-c", self.service_commands()[action]], capture_output=True, text=True)
        if done.returncode != 0:
            tail = _tail(self.error_log)
            raise RuntimeError(f"MariaDB sandbox {action} failed (exit {done.returncode}); error log:\n{tail}")


def _tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no error log)"
