"""The host objects and the web handlers over them, wired once for :func:`orchagent.service.make_service`.

Host objects (MySQL, disk usage, snapshots, the datadir eraser, the replication logs) share the
one process runner and the one thread runner; the handlers of ``web/`` only receive them.  Tests
build the same graph through these functions, so they test the wiring the agent runs.
"""

from __future__ import annotations

import attrs

from orchagent.config import Config
from orchagent.host.datadir import DatadirEraser
from orchagent.host.disk import DiskUsage
from orchagent.host.mounts import MOUNTINFO
from orchagent.host.mysql import MySQL
from orchagent.host.relaylog import ReplicationLogs
from orchagent.host.snapshots import Snapshots, make_backend
from orchagent.interfaces import Clock, ProcessRunner, ThreadRunner
from orchagent.web.mysqlapi import MySQLAPI
from orchagent.web.storageapi import StorageAPI


@attrs.frozen
class Host:
    """What this host offers the seed manager, the metrics and the web handlers."""

    mysql: MySQL
    disk: DiskUsage
    snapshots: Snapshots
    datadir: DatadirEraser
    logs: ReplicationLogs


def make_host(config: Config, runner: ProcessRunner, clock: Clock, mysql: MySQL, *,
              in_thread: ThreadRunner, mountinfo_path: str = MOUNTINFO) -> Host:
    """The host objects for ``config`` (its ``SnapshotBackend``), over ``mysql``."""
    disk = DiskUsage(runner, clock)
    backend = make_backend(config, runner, clock, in_thread, mysql)
    return Host(
        mysql=mysql,
        disk=disk,
        snapshots=Snapshots(config, backend, runner, disk, mysql, in_thread, mountinfo_path),
        datadir=DatadirEraser(config, runner, mysql, disk, in_thread, mountinfo_path),
        logs=ReplicationLogs(mysql, runner, in_thread=in_thread, client_command=config.mysql_client_command,
                             max_apply_bytes=config.apply_relaylog_max_bytes),
    )


def storage_api(config: Config, host: Host) -> StorageAPI:
    return StorageAPI(mysql=host.mysql, snapshots=host.snapshots, disk=host.disk, datadir=host.datadir,
                      du_roots=(config.snapshot_mount_point, *config.allowed_path_roots))


def mysql_api(config: Config, host: Host) -> MySQLAPI:
    return MySQLAPI(host.mysql, host.logs, error_log_tail_lines=config.error_log_tail_lines)
