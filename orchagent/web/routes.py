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


def route_table(core, storage, mysql, seeds, status_endpoint: str) -> tuple[Route, ...]:
    """The handler objects come from orchagent.web.{coreapi,storageapi,mysqlapi,seedapi}."""
    return (
        # identity and health: no token (V1)
        Route("GET", "/api/hostname", core.hostname, token=False),
        Route("GET", status_endpoint.rstrip("/") or "/", core.status, token=False),
        # whitelisted commands
        Route("GET", "/api/custom-commands/:cmd", core.custom_command),
        # --- storage: snapshots, mounts, disk usage (orchagent.web.storageapi) ---
        # --- mysql: service, error log, relay logs and binlogs (orchagent.web.mysqlapi) ---
        # --- seeds (orchagent.web.seedapi) ---
    )
