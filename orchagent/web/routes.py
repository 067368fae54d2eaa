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
    token: bool = True  # False only for /api/hostname and the status endpoint
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


def route_table(core, storage, mysql, seeds, status_endpoint: str,
                apply_relaylog_max_bytes: int) -> tuple[Route, ...]:
    """The handler objects come from orchagent.web.{coreapi,storageapi,mysqlapi,seedapi}."""
    return (
        # identity and health: no token (V1)
        Route("GET", "/api/hostname", core.hostname, token=False),
        Route("GET", status_endpoint.rstrip("/") or "/", core.status, token=False),
        # whitelisted commands
        Route("GET", "/api/custom-commands/:cmd", core.custom_command),
        # --- storage: snapshots, mounts, disk usage (orchagent.web.storageapi) ---
        Route("GET", "/api/available-snapshots-local", storage.available_snapshots_local),
        Route("GET", "/api/available-snapshots", storage.available_snapshots),
        Route("GET", "/api/lvs-snapshots", storage.lvs_snapshots),
        Route("GET", "/api/mount", storage.mount),
        Route("GET", "/api/mysql-du", storage.mysql_du),
        Route("GET", "/api/mysql-datadir-available-space", storage.mysql_datadir_available_space),
        Route("GET", "/api/lvs", storage.lvs),
        Route("GET", "/api/lvs/:pattern", storage.lvs_matching),
        Route("GET", "/api/lv", storage.lv),
        Route("GET", "/api/lv/:lv", storage.lv_by_path),
        Route("GET", "/api/mountlv", storage.mountlv),
        Route("GET", "/api/umount", storage.umount),
        Route("GET", "/api/removelv", storage.removelv),
        Route("GET", "/api/create-snapshot", storage.create_snapshot),
        Route("GET", "/api/du", storage.du),
        Route("GET", "/api/delete-mysql-datadir", storage.delete_mysql_datadir),
        # --- mysql: service, error log, relay logs and binlogs (orchagent.web.mysqlapi) ---
        Route("GET", "/api/mysql-status", mysql.status),
        Route("GET", "/api/mysql-port", mysql.port),
        Route("GET", "/api/mysql-error-log-tail", mysql.error_log_tail),
        Route("GET", "/api/mysql-stop", mysql.stop),
        Route("GET", "/api/mysql-start", mysql.start),
        Route("GET", "/api/post-copy", seeds.post_copy),  # refused after a failed seed
        Route("GET", "/api/mysql-relay-log-index-file", mysql.relay_log_index_file),
        Route("GET", "/api/mysql-relay-log-files", mysql.relay_log_files),
        Route("GET", "/api/mysql-relay-log-end-coordinates", mysql.relay_log_end_coordinates),
        Route("GET", "/api/mysql-binlog-contents", mysql.binlog_contents),
        Route("GET", "/api/mysql-binlog-binary-contents", mysql.binlog_binary_contents),
        Route("GET", "/api/mysql-relaylog-contents-tail/:relaylog/:start", mysql.relaylog_contents_tail),
        Route("POST", "/api/apply-relaylog-contents", mysql.apply_relaylog_contents,
              max_body=apply_relaylog_max_bytes),
        # --- seeds (orchagent.web.seedapi) ---
        Route("GET", "/api/receive-mysql-seed-data/:seedId", seeds.receive),
        Route("GET", "/api/send-mysql-seed-data/:targetHost/:seedId", seeds.send),
        Route("GET", "/api/abort-seed/:seedId", seeds.abort),
        Route("GET", "/api/seed-command-completed/:seedId", seeds.completed),
        Route("GET", "/api/seed-command-succeeded/:seedId", seeds.succeeded),
        Route("GET", "/api/seed-status/:seedId", seeds.status),
    )
