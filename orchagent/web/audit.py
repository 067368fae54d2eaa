"""The audit log: who changed what on this host, and who was refused.

Every call of a route that changes the host (emptying the datadir, starting MySQL, a seed...)
and every refused request (:func:`refused`) becomes one JSON line: time, client address, TLS
client subject, route, parameters (never the token), outcome, duration and seed id.  The line
goes to ``AuditLogFile`` when set and always to the agent's log (the journal, under systemd).

The file is opened for each line (``O_APPEND``, never following a link), so logrotate may
move it away at any time without a signal to the agent.  Lines are small and rare next to the
requests they record, so they are written on the reactor thread, as the log itself is.
"""

from __future__ import annotations

import datetime
import json
import os

from orchagent import logs
from orchagent.web.resource import Answered

log = logs.logger("orchagent.audit")

_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


_REFUSALS = frozenset((400, 401, 403, 405, 409, 413, 429, 431, 503))


def refused(answered: Answered) -> bool:
    """Turned away: bad input, no or wrong credentials, an unsafe state, a limit, an unknown path.

    A 404 from a route (an unknown seed, an error log not yet written) is an answer, not a refusal.
    """
    return answered.code in _REFUSALS or (answered.code == 404 and answered.route is None)


def audited(answered: Answered) -> bool:
    """A call that changes the host, or a refusal."""
    return (answered.route is not None and answered.route.changes) or refused(answered)


def audit_line(answered: Answered) -> str:
    route = answered.route
    seed_id = answered.params.get("seedId")
    return json.dumps({
        "time": datetime.datetime.fromtimestamp(answered.at, datetime.timezone.utc).isoformat(timespec="milliseconds"),
        "client": answered.client,
        "tls_subject": answered.peer_subject,
        "method": answered.method,
        "route": route.pattern if route is not None else None,
        "params": dict(answered.params),
        "query": dict(answered.query),
        "status": answered.code,
        "outcome": "ok" if answered.code < 400 else "refused" if refused(answered) else "failed",
        "error": answered.message or None,
        "seconds": round(answered.seconds, 6),
        "seed_id": int(seed_id) if seed_id and seed_id.isdigit() else None,
    }, separators=(",", ":"))


class AuditLog:
    """An observer of answered requests (see :class:`orchagent.web.resource.Observer`)."""

    def __init__(self, path: str = ""):
        self._path = path

    def request_done(self, answered: Answered) -> None:
        if not audited(answered):
            return
        line = audit_line(answered)
        log.info("audit {audit}", audit=line)  # refusals are also warned about, in words, by the resource
        if self._path:
            self._append(line + "\n")

    def _append(self, text: str) -> None:
        try:
            fd = os.open(self._path, _OPEN_FLAGS, 0o640)
            try:
                os.write(fd, text.encode("utf-8"))
            finally:
                os.close(fd)
        except OSError as e:
            log.error("cannot write the audit log {path} (AuditLogFile): {error}", path=self._path, error=e.strerror)
