"""Seed sources and targets for the end-to-end seed tests and the demo.

A source is a real MariaDB server whose directory is a btrfs subvolume, with sample data, and a
read-only snapshot taken through its agent (``create-snapshot``) while it runs.  A target is a
MariaDB sandbox that is stopped (installed or not: the seed replaces its datadir anyway).  The
agent settings here are what an administrator would write for each host::

    source = SeedSource(directory, size_mb=300)     # ... source.destroy() at the end
    agent = start_agent({**source.settings(), **transfer_settings(port, secret)}, address="127.0.0.1")
"""

from __future__ import annotations

import os
import stat

from testbed.btrfs import BtrfsFileSystem
from testbed.mariadb import MariaDBSandbox

SOURCE_ADDRESS, TARGET_ADDRESS = "127.0.0.1", "127.0.0.2"  # two loopback addresses: two hosts
SNAPSHOT_FILTER = "mysql-snap-"
SYSTEM_SCHEMAS = ("mysql", "information_schema", "performance_schema", "sys")


class SeedSource:
    """A running MariaDB in the subvolume ``mysql`` of its own btrfs loop device, with sample data.

    Snapshots go to ``<fs>/snapshots``; ``checksums`` are its tables' checksums at the start.
    A failure half-way through the set-up cleans up what was made; otherwise call :meth:`destroy`.
    """

    def __init__(self, directory: str, *, size_mb: int, rows: int = 5000, ballast_bytes: int = 0):
        self.fs = BtrfsFileSystem(directory, size_mb)
        self.sandbox: MariaDBSandbox | None = None
        try:
            self.fs.create()
            self.sandbox = MariaDBSandbox(self.fs.subvolume("mysql"))
            self.snapshot_directory = self.fs.directory("snapshots")
            self.mount_point = os.path.join(directory, "snapshot-mount")
            os.makedirs(self.mount_point, exist_ok=True)
            self.sandbox.start()
            load_sample_data(self.sandbox, rows)
            if ballast_bytes:
                write_ballast(os.path.join(self.sandbox.datadir, "ballast.bin"), ballast_bytes)
            self.checksums = table_checksums(self.sandbox)
        except BaseException:
            self.destroy()
            raise

    def settings(self) -> dict:
        return {**self.sandbox.config_values(), "SnapshotBackend": "btrfs",
                "BtrfsSnapshotDirectory": self.snapshot_directory,
                "SnapshotVolumesFilter": SNAPSHOT_FILTER, "SnapshotMountPoint": self.mount_point}

    def destroy(self) -> None:
        if self.sandbox is not None and self.sandbox.is_running():
            self.sandbox.stop()
        self.fs.destroy()


class SeedTarget:
    """A stopped MariaDB sandbox under ``directory`` whose host has no snapshots of its own."""

    def __init__(self, directory: str, install: bool = False):
        self.sandbox = MariaDBSandbox(os.path.join(directory, "server"))
        if install:
            self.sandbox.install()
        os.makedirs(self.sandbox.datadir, exist_ok=True)
        self.snapshot_directory = os.path.join(directory, "no-snapshots")
        self.mount_point = os.path.join(directory, "snapshot-mount")
        os.makedirs(self.snapshot_directory, exist_ok=True)
        os.makedirs(self.mount_point, exist_ok=True)

    def settings(self) -> dict:
        return {**self.sandbox.config_values(), "SnapshotBackend": "btrfs",
                "BtrfsSnapshotDirectory": self.snapshot_directory,
                "SnapshotVolumesFilter": SNAPSHOT_FILTER, "SnapshotMountPoint": self.mount_point}


def directory_agent_settings(agent_dir: str, datadir: str, seed_port: int, secret: str, **extra) -> dict:
    """An agent whose "datadir" is a plain directory: MySQL reads as stopped and no snapshot is
    mounted, so it sends (or receives into) the directory itself with the built-in transfer."""
    snapshots, mount_point = os.path.join(agent_dir, "snapshots"), os.path.join(agent_dir, "mnt")
    os.makedirs(snapshots, exist_ok=True)
    os.makedirs(mount_point, exist_ok=True)
    return {"MySQLDatadirCommand": f"echo {datadir}", "MySQLServiceStatusCommand": "false",
            "SnapshotBackend": "btrfs", "BtrfsSnapshotDirectory": snapshots, "SnapshotMountPoint": mount_point,
            **transfer_settings(seed_port, secret, **extra)}


def transfer_settings(port: int, secret: str, **extra) -> dict:
    """The built-in transfer's keys (the same secret on both agents)."""
    return {"SeedTransferPort": port, "SeedTransferSecret": secret, **extra}


_V1_RECEIVE_SCRIPT = """#!/bin/bash
# ReceiveSeedDataCommand as V1 users write it: <datadir> <port>
set -o pipefail
socat -u TCP-LISTEN:"$2",bind=127.0.0.2,reuseaddr - | tar -x -C "$1"
"""
_V1_SEND_SCRIPT = """#!/bin/bash
# SendSeedDataCommand as V1 users write it: <source directory> <target host> <port>
set -o pipefail
tar -c -C "$1" . | socat -u - TCP:"$2":"$3"
"""


def socat_tar_commands(directory: str) -> dict:
    """Command mode's keys as V1 users set them (socat and tar; the target on 127.0.0.2), the
    scripts written into ``directory``."""
    commands = {}
    for key, text in (("ReceiveSeedDataCommand", _V1_RECEIVE_SCRIPT), ("SendSeedDataCommand", _V1_SEND_SCRIPT)):
        path = os.path.join(directory, key)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, stat.S_IRWXU)
        commands[key] = path
    return commands


def load_sample_data(sandbox: MariaDBSandbox, rows: int = 5000) -> None:
    """Two databases with InnoDB, Aria and MyISAM tables, a few hundred kB each."""
    sandbox.sql(f"""
        CREATE DATABASE shop;
        USE shop;  -- the seq_1_to_N tables of the Sequence engine need a current database
        CREATE TABLE shop.customers (id INT PRIMARY KEY, name VARCHAR(64), email VARCHAR(128))
            ENGINE=InnoDB;
        INSERT INTO shop.customers SELECT seq, CONCAT('customer ', seq), CONCAT('c', seq, '@example.com')
            FROM seq_1_to_{rows};
        CREATE TABLE shop.orders (id INT AUTO_INCREMENT PRIMARY KEY, customer INT, total DECIMAL(10,2),
            note TEXT, KEY (customer)) ENGINE=InnoDB;
        INSERT INTO shop.orders (customer, total, note) SELECT seq % 97 + 1, seq * 1.25, REPEAT(MD5(seq), 4)
            FROM seq_1_to_{rows * 2};
        CREATE DATABASE archive;
        CREATE TABLE archive.events (id INT PRIMARY KEY, happened DATETIME, payload VARCHAR(255))
            ENGINE=Aria;
        INSERT INTO archive.events SELECT seq, '2024-01-01' + INTERVAL seq MINUTE, SHA2(seq, 256)
            FROM seq_1_to_{rows};
        CREATE TABLE archive.counters (name VARCHAR(32) PRIMARY KEY, value BIGINT) ENGINE=MyISAM;
        INSERT INTO archive.counters SELECT CONCAT('counter-', seq), seq * seq FROM seq_1_to_{rows // 10};
        FLUSH TABLES;
    """)


def user_tables(sandbox: MariaDBSandbox) -> list[str]:
    excluded = ", ".join(f"'{schema}'" for schema in SYSTEM_SCHEMAS)
    rows = sandbox.sql(f"SELECT CONCAT(table_schema, '.', table_name) FROM information_schema.tables "
                       f"WHERE table_schema NOT IN ({excluded}) AND table_type = 'BASE TABLE' "
                       f"ORDER BY 1")
    return rows.split()


def table_checksums(sandbox: MariaDBSandbox) -> dict[str, str]:
    """``CHECKSUM TABLE ... EXTENDED`` (rows read, whatever the engine) of every user table."""
    tables = user_tables(sandbox)
    if not tables:
        return {}
    output = sandbox.sql("CHECKSUM TABLE " + ", ".join(tables) + " EXTENDED")
    return dict(line.split("\t") for line in output.splitlines())


def write_ballast(path: str, size: int) -> None:
    """A file of incompressible bytes (a stand-in for a big table), written in 4 MB pieces.

    Synced, so that the file system's free space (``df``, which btrfs updates lazily) shows it.
    """
    with open(path, "wb") as f:
        for offset in range(0, size, 4 * 1024 * 1024):
            f.write(os.urandom(min(4 * 1024 * 1024, size - offset)))
        f.flush()
        os.fsync(f.fileno())
    os.sync()


def entries_outside_staging(datadir: str) -> list[str]:
    """What a datadir holds besides a seed's hidden staging directory (``.orchagent-seed-<id>``)."""
    return sorted(name for name in os.listdir(datadir) if not name.startswith(".orchagent-seed-"))


def tree_listing(root: str) -> dict[str, tuple[int, int]]:
    """Relative path -> (size, mtime_ns) of every entry under ``root``: to show it did not change."""
    listing = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            listing[os.path.relpath(path, root)] = (info.st_size, info.st_mtime_ns)
    return listing
