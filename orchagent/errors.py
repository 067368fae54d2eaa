"""Failures whose message is meant for the caller, and the one function that keeps secrets out.

The layers below the web layer raise these; only the web layer knows which HTTP status each
one becomes.  Messages must say what to fix and must never contain a secret: text the agent
did not write itself (a command's stderr, an exception from a library) goes through `redact`.
"""

from __future__ import annotations

import re
from typing import Iterable

REDACTED = "<redacted>"

#: Secret-looking text that commands print (bash echoes a failed command line, URLs carry
#: credentials): each pattern keeps group 1 and replaces the rest of the match.
_SECRET_PATTERNS = tuple(re.compile(pattern, re.IGNORECASE) for pattern in (
    r"""(\b[\w.-]*(?:password|passwd|pwd|secret|token)[\w.-]*\s*(?:=|:[ \t]*))(?:'[^']*'|"[^"]*"|[^\s'"&;,]+)""",
    r"""(--[\w-]*(?:password|passwd|secret|token)[\w-]*\s+)(?:'[^']*'|"[^"]*"|[^\s'"-][^\s'"]*)""",
    r"""((?<![\w-])-p)(?:'[^']*'|"[^"]*"|[^\s'"]+)""",  # mysql -pPASSWORD
    r"""(\bidentified\s+(?:with\s+\S+\s+)?by\s+(?:password\s+)?)(?:'[^']*'|"[^"]*"|\S+)""",
    r"""(\b[a-z][\w+.-]*://[^\s/:@]+:)[^\s/@]+(?=@)""",  # scheme://user:password@host
))


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every configured secret and anything that looks like a password replaced."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda match: match.group(1) + REDACTED, text)
    return text


class AgentError(Exception):
    """A failure the caller should see, with a message safe to show."""


class InvalidInput(AgentError):
    """A request value is malformed or outside what is allowed; nothing was changed."""


class NotFound(AgentError):
    """The named thing (custom command, seed, logical volume, file) does not exist."""


class Conflict(AgentError):
    """The host is in a state where the action is unsafe (MySQL running, snapshot mounted...)."""


class Busy(AgentError):
    """The agent runs as much as it is configured to; the caller may retry after ``retry_after`` s."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after
