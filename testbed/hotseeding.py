"""A hot seed's two hosts, for the hot-seed tests and ``./run-demo --hot``.

The source is a running MariaDB with binary logs and GTIDs, a backup user (the privileges the
README asks for) and a replication user; its agent has ``SnapshotBackend: "hotbackup"``.  The
target is an empty, stopped MariaDB whose agent has ``SeedStartReplication``.  Both agents use
the built-in transfer on two loopback addresses::

    hosts = HotSeedHosts(directory)          # ... hosts.close() at the end
    load = WriteLoad(hosts.source)           # the writes a hot seed must not disturb
    run = Orchestrator().seed(hosts.target_agent, hosts.source_agent, 1, poll_seconds=1)

:func:`damaging_backup_tool` makes a ``mariabackup`` whose stream arrives damaged, for the test
of a corrupted stream.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import threading

from orchagent.host.replication import sql_string
from testbed.agent import free_port, start_agent
from testbed.mariadb import MariaDBSandbox
from testbed.orchestrator import HostAgent
from testbed.seeding import SOURCE_ADDRESS, TARGET_ADDRESS, transfer_settings

BACKUP_PASSWORD = "b'ack\\up;#%&?"
REPLICATION_PASSWORD = "r'e\"p\\l;\n`$(id)` é#%&?-- "
#: The privileges the README asks for: mariabackup's, and replication's.
BACKUP_GRANTS = "RELOAD, PROCESS, LOCK TABLES, BINLOG MONITOR"


def write_private(directory: str, name: str, text: str) -> str:
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)
    return path


def defaults_file(directory: str, sandbox: MariaDBSandbox, password: str) -> str:
    # a password with # or ; needs quotes in an option file; \ and " are escaped inside them
    quoted = '"' + password.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return write_private(directory, "backup.cnf",
                         f"[client]\nuser=backup\npassword={quoted}\nsocket={sandbox.socket}\n")


def source_with_users(directory: str) -> MariaDBSandbox:
    """A source with binary logs and GTIDs, a little data, a backup user and a replication user."""
    source = MariaDBSandbox(os.path.join(directory, "source"), log_bin=True)
    source.start()
    source.sql("CREATE DATABASE shop; CREATE TABLE shop.orders (id INT AUTO_INCREMENT PRIMARY KEY, item VARCHAR(40)) "
               "ENGINE=InnoDB; INSERT INTO shop.orders (item) VALUES ('a'), ('b'), ('c');"
               f"CREATE USER backup@localhost IDENTIFIED BY {sql_string(BACKUP_PASSWORD)};"
               f"GRANT {BACKUP_GRANTS} ON *.* TO backup@localhost;"
               f"CREATE USER repl@'127.0.0.1' IDENTIFIED BY {sql_string(REPLICATION_PASSWORD)};"
               "GRANT REPLICATION SLAVE ON *.* TO repl@'127.0.0.1';")
    return source


def replica_status(server: MariaDBSandbox) -> dict[str, str]:
    """``SHOW SLAVE STATUS`` by column name ({} when the server is no replica)."""
    output = subprocess.run([*server.client_argv(), "--batch", "-e", "SHOW SLAVE STATUS"],
                            check=True, capture_output=True, text=True).stdout
    lines = output.split("\n")
    if len(lines) < 2 or not lines[1]:
        return {}
    return dict(zip(lines[0].split("\t"), lines[1].split("\t")))


class WriteLoad:
    """A thread inserting rows into the source until stopped (the load a hot seed must not disturb).

    A failing insert (the server stopped, the client interrupted by a Ctrl-C) ends it, kept in ``error``.
    """

    ROWS_PER_BATCH = 50

    def __init__(self, source: MariaDBSandbox) -> None:
        self._source = source
        self._stop = threading.Event()
        self.batches = 0  # each a transaction of ROWS_PER_BATCH rows
        self.error: subprocess.CalledProcessError | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._source.sql("USE shop; INSERT INTO orders (item) "
                                 f"SELECT CONCAT('load ', seq) FROM seq_1_to_{self.ROWS_PER_BATCH}")
            except subprocess.CalledProcessError as e:
                self.error = e
                return
            self.batches += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class HotSeedHosts:
    """A source under ``SnapshotBackend: "hotbackup"`` and an empty target, an agent on each.

    ``rows``: rows of the source's ``shop.bulk`` table (about 730 bytes each on disk); ``rate``:
    the source's SeedMaxBytesPerSecond (0: no limit); ``source_path``: directories put in front of
    the source agent's PATH (a wrapped backup tool).  A failure half-way through cleans up what was
    made; otherwise call :meth:`close`.
    """

    def __init__(self, directory: str, *, rows: int = 20000, rate: int = 0, source_path: tuple[str, ...] = ()):
        self.directory = directory
        self._running = []
        self.source = self.target_server = None
        try:
            self.source = source_with_users(directory)
            self.source.sql("USE shop; CREATE TABLE bulk (id INT PRIMARY KEY, note TEXT) ENGINE=InnoDB; "
                            f"INSERT INTO bulk SELECT seq, REPEAT(MD5(seq), 8) FROM seq_1_to_{rows}")
            self.target_server = MariaDBSandbox(os.path.join(directory, "target"), extra_options={"server_id": "2"})
            os.makedirs(self.target_server.datadir)
            transfer = transfer_settings(free_port(TARGET_ADDRESS), os.urandom(16).hex())
            self.defaults = defaults_file(directory, self.source, BACKUP_PASSWORD)
            no_snapshots = os.path.join(directory, "no-snapshots")
            os.makedirs(no_snapshots)
            self.source_temp = os.path.join(directory, "source-tmp")  # the backup's temporary files, and nobody else's
            os.mkdir(self.source_temp, 0o700)
            path = os.pathsep.join([*source_path, os.environ.get("PATH", "")])
            self.source_agent = self._agent(SOURCE_ADDRESS, {
                **self.source.config_values(), **transfer, "SnapshotBackend": "hotbackup",
                "SeedMaxBytesPerSecond": rate, "HotBackupDefaultsFile": self.defaults},
                env={"PATH": path, "TMPDIR": self.source_temp})
            self.target_agent = self._agent(TARGET_ADDRESS, {
                **self.target_server.config_values(), **transfer, "SnapshotBackend": "btrfs",
                "BtrfsSnapshotDirectory": no_snapshots, "SeedStartReplication": True, "SeedReplicationUser": "repl",
                "SeedReplicationPasswordFile": write_private(directory, "repl-password", REPLICATION_PASSWORD)})
        except BaseException:
            self.close()
            raise

    def _agent(self, address: str, settings: dict, env: dict | None = None) -> HostAgent:
        running = start_agent(settings, address=address, directory=tempfile.mkdtemp(dir=self.directory), env=env)
        self._running.append(running)
        return HostAgent.of(running)

    def backup_temp_dirs(self) -> list[str]:
        """The source agent's backup temporary directories that are left."""
        return [name for name in os.listdir(self.source_temp) if name.endswith(".orchagent-hotbackup")]

    def agent_logs(self) -> str:
        """Both agents' logs (source first), as far as they got."""
        return "".join(running.log() for running in self._running)

    def close(self) -> None:
        """Stop the agents and both servers (the target's, if a seed started it), each even when
        stopping another failed; then raise the first failure."""
        running, self._running = self._running, []
        servers = [server for server in (self.target_server, self.source) if server is not None]
        failures = []
        for stop in [agent.stop for agent in running] + [server.stop for server in servers if server.is_running()]:
            try:
                stop()
            except Exception as e:
                failures.append(e)
        if failures:
            raise failures[0]


_DAMAGING_TOOL = """#!/bin/bash
# mariabackup whose --backup stream has one byte of a table's data page flipped (testbed.hotseeding)
set -o pipefail
for argument; do
    if [ "$argument" = --backup ]; then
        {tool} "$@" | {python} {filter}
        exit
    fi
done
exec -a mariabackup {tool} "$@"
"""


def damaging_backup_tool(directory: str) -> str:
    """A directory holding a ``mariabackup`` that runs the real one, but flips a byte in a data page of
    its ``--backup`` stream (:mod:`testbed.mbstream_damage`); put it in front of the source agent's PATH."""
    bin_directory = os.path.join(directory, "damaging-bin")
    os.makedirs(bin_directory)
    path = os.path.join(bin_directory, "mariabackup")
    with open(path, "w") as f:
        f.write(_DAMAGING_TOOL.format(
            tool=shlex.quote(shutil.which("mariabackup")), python=shlex.quote(sys.executable),
            filter=shlex.quote(os.path.join(os.path.dirname(os.path.abspath(__file__)), "mbstream_damage.py"))))
    os.chmod(path, stat.S_IRWXU)
    return bin_directory
