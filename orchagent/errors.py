"""Failures whose message is meant for the caller.

The layers below the web layer raise these; only the web layer knows which HTTP status each
one becomes.  Messages must say what to fix and must never contain a secret.
"""


class AgentError(Exception):
    """A failure the caller should see, with a message safe to show."""


class InvalidInput(AgentError):
    """A request value is malformed or outside what is allowed; nothing was changed."""


class NotFound(AgentError):
    """The named thing (custom command, seed, logical volume, file) does not exist."""


class Conflict(AgentError):
    """The host is in a state where the action is unsafe (MySQL running, snapshot mounted...)."""
