"""Every route the agent serves, in one table.

Patterns use V1's syntax: a ``:name`` segment matches one decoded path segment (never a ``/``).
Every route also matches with one trailing slash, and GET routes answer HEAD (contract A.1).
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import attrs

Handler = Callable[[Any], Awaitable[Any]]


@attrs.frozen
class Route:
    method: str
    pattern: str
    handler: Handler
    token: bool = True  # False only for /api/hostname, the status endpoint, /metrics and the API document
    changes: bool = False  # it changes the host (the audit log records every call)
    summary: str = ""  # one line for the API document (orchagent.web.openapi)
    query: tuple[str, ...] = ()  # the query parameters it reads (besides the token)
    max_body: int = 0  # bytes of request body the route takes; more is refused before it is read

    def match(self, path: str) -> dict[str, str] | None:
        """The path parameters if ``path`` (decoded, trailing slash removed) fits the pattern."""
        want, got = self.pattern.split("/"), path.split("/")
        if len(want) != len(got):
            return None
        params = {}
        for pattern_part, part in zip(want, got):
            if pattern_part.startswith(":"):
                if not part:
                    return None
                params[pattern_part[1:]] = part
            elif pattern_part != part:
                return None
        return params

    def accepts(self, method: str) -> bool:
        return method == self.method or (method == "HEAD" and self.method == "GET")


METRICS_PATH = "/metrics"


def route_table(core, storage, mysql, seeds, status_endpoint: str, apply_relaylog_max_bytes: int,
                metrics: bool = True) -> tuple[Route, ...]:
    """The handler objects come from orchagent.web.{coreapi,storageapi,mysqlapi,seedapi}.

    ``metrics``: serve ``/metrics`` (``MetricsEnabled``).
    """
    optional = (Route("GET", METRICS_PATH, core.metrics, token=False,
                      summary="Prometheus metrics (text format)"),) if metrics else ()
    return optional + (
        # identity and health: no token (V1)
        Route("GET", "/api/hostname", core.hostname, token=False,
              summary="The name this agent registers with orchestrator"),
        Route("GET", status_endpoint.rstrip("/") or "/", core.status, token=False,
              summary='"OK", or 500 "BAD" when no orchestrator node answered for StatusBadSeconds'),
        Route("GET", "/api/version", core.version, summary="orchagent's version"),
        # whitelisted commands: they may do anything
        Route("GET", "/api/custom-commands/:cmd", core.custom_command, changes=True,
              summary="Run the command CustomCommands names cmd; its output in the OK envelope"),
        # --- storage: snapshots, mounts, disk usage (orchagent.web.storageapi) ---
        Route("GET", "/api/available-snapshots-local", storage.available_snapshots_local,
              summary="Hosts in this data centre that can seed this one"),
        Route("GET", "/api/available-snapshots", storage.available_snapshots,
              summary="Hosts anywhere that can seed this one"),
        Route("GET", "/api/lvs-snapshots", storage.lvs_snapshots,
              summary="Snapshot volumes (names containing SnapshotVolumesFilter)"),
        Route("GET", "/api/mount", storage.mount, summary="What is mounted at SnapshotMountPoint"),
        Route("GET", "/api/mysql-du", storage.mysql_du, summary="Bytes in the datadir (during a receive: arrived)"),
        Route("GET", "/api/mysql-datadir-available-space", storage.mysql_datadir_available_space,
              summary="Bytes free on the datadir's file system"),
        Route("GET", "/api/lvs", storage.lvs, summary="All volumes"),
        Route("GET", "/api/lvs/:pattern", storage.lvs_matching, summary="Volumes whose name contains pattern"),
        Route("GET", "/api/lv", storage.lv, query=("lv",), summary="The volume lv (a name or path)"),
        Route("GET", "/api/lv/:lv", storage.lv_by_path, summary="The volume lv (a name)"),
        Route("GET", "/api/mountlv", storage.mountlv, changes=True, query=("lv",),
              summary="Mount the snapshot lv at SnapshotMountPoint"),
        Route("GET", "/api/umount", storage.umount, changes=True, summary="Unmount SnapshotMountPoint"),
        Route("GET", "/api/removelv", storage.removelv, changes=True, query=("lv",),
              summary="Remove the snapshot lv"),
        Route("GET", "/api/create-snapshot", storage.create_snapshot, changes=True,
              summary="Take a snapshot (CreateSnapshotCommand, or the btrfs backend's own)"),
        Route("GET", "/api/du", storage.du, query=("path",),
              summary="Bytes under path (inside the datadir, SnapshotMountPoint or AllowedPathRoots)"),
        Route("GET", "/api/delete-mysql-datadir", storage.delete_mysql_datadir, changes=True,
              summary="Empty the datadir (refused while MySQL may run)"),
        # --- mysql: service, error log, relay logs and binlogs (orchagent.web.mysqlapi) ---
        Route("GET", "/api/mysql-status", mysql.status, summary="Whether MySQL runs (true when unknown)"),
        Route("GET", "/api/mysql-port", mysql.port, summary="MySQL's port"),
        Route("GET", "/api/mysql-error-log-tail", mysql.error_log_tail,
              summary="The error log's last ErrorLogTailLines lines"),
        Route("GET", "/api/mysql-stop", mysql.stop, changes=True, summary="MySQLServiceStopCommand"),
        Route("GET", "/api/mysql-start", mysql.start, changes=True, summary="MySQLServiceStartCommand"),
        Route("GET", "/api/post-copy", seeds.post_copy, changes=True, query=("sourceHost",),
              summary="PostCopyCommand after a seed (refused after a failed one)"),
        Route("GET", "/api/mysql-relay-log-index-file", mysql.relay_log_index_file,
              summary="The relay-log index file's path"),
        Route("GET", "/api/mysql-relay-log-files", mysql.relay_log_files, summary="The relay logs, in order"),
        Route("GET", "/api/mysql-relay-log-end-coordinates", mysql.relay_log_end_coordinates,
              summary="The last relay log and its size"),
        Route("GET", "/api/mysql-binlog-contents", mysql.binlog_contents, query=("binlog", "start", "stop"),
              summary="mysqlbinlog text of the named logs, gzipped and base64-encoded"),
        Route("GET", "/api/mysql-binlog-binary-contents", mysql.binlog_binary_contents,
              query=("binlog", "start", "stop"), summary="Raw bytes of the named logs, gzipped and base64-encoded"),
        Route("GET", "/api/mysql-relaylog-contents-tail/:relaylog/:start", mysql.relaylog_contents_tail,
              summary="Raw relay-log bytes from start on, gzipped and base64-encoded"),
        Route("POST", "/api/apply-relaylog-contents", mysql.apply_relaylog_contents, changes=True,
              max_body=apply_relaylog_max_bytes, summary="Apply base64(gzip(raw relay log)) through MySQLClientCommand"),
        # --- seeds (orchagent.web.seedapi) ---
        Route("GET", "/api/receive-mysql-seed-data/:seedId", seeds.receive, changes=True,
              summary="Arm a receive of the seed into the datadir"),
        Route("GET", "/api/send-mysql-seed-data/:targetHost/:seedId", seeds.send, changes=True,
              summary="Send the mounted snapshot (or stopped datadir) to targetHost"),
        Route("GET", "/api/abort-seed/:seedId", seeds.abort, changes=True,
              summary="Stop everything of the seed; it then reads completed and failed"),
        Route("GET", "/api/seed-throttle/:seedId", seeds.throttle, changes=True, query=("bytesPerSecond",),
              summary="On the source: pace the running built-in send at bytesPerSecond (0: no limit)"),
        Route("GET", "/api/seed-command-completed/:seedId", seeds.completed, summary="Whether the seed ended"),
        Route("GET", "/api/seed-command-succeeded/:seedId", seeds.succeeded, summary="Whether the seed succeeded"),
        Route("GET", "/api/seed-status/:seedId", seeds.status,
              summary="The seed's state, progress, rate, ETA and error"),
        Route("GET", "/api/seeds", seeds.seeds, summary="The latest seeds (at most 100), newest first, as seed-status"),
    )
