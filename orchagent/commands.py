"""What a command's run comes to: its result, and the errors a failed or timed-out run raises.

Apart from :mod:`orchagent.process` (which spawns) so that host objects, the error funnel and test
doubles can use results without the spawning machinery.  A failure message quotes stderr's tail
with secrets redacted (`errors.redact`).
"""

from __future__ import annotations

import attrs

from orchagent.errors import AgentError, redact

FAILURE_TAIL_CHARS = 500  # how much of stderr's tail goes into a message


@attrs.frozen
class CommandResult:
    name: str  # what messages call it: argv[0]'s basename, or the config key of a configured command
    argv: tuple[str, ...]  # as requested (holds the command text of a configured command: never log it)
    exit_code: int | None  # None when ended by a signal (or when it never ended, see below)
    signal: int | None
    stdout: bytes  # the first ``max_output`` bytes (empty when ``stdout_path`` was given)
    stderr: bytes  # the last 64 KiB
    stdout_truncated: bool
    timed_out: bool
    timeout: float | None = None  # the limit it ran under (the one that fired, if one did), for messages
    idle: bool = False  # the limit that fired was the idle timeout: no output for ``timeout`` seconds

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def abandoned(self) -> bool:
        """True when it survived SIGKILL to its group and we stopped waiting for it."""
        return self.exit_code is None and self.signal is None

    def text(self) -> str:
        """stdout decoded as UTF-8 (invalid bytes replaced)."""
        return self.stdout.decode("utf-8", "replace")


class CommandFailed(AgentError):
    """A command exited non-zero or by a signal; the message names it and quotes stderr's tail.

    ``secrets`` (the runner's: token, passwords) are redacted from the quoted stderr, as is
    anything that looks like a password.
    """

    def __init__(self, result: CommandResult, secrets: tuple[str, ...] = ()):
        super().__init__(_describe_failure(result, secrets))
        self.result = result


class CommandTimedOut(CommandFailed):
    """A command ran past its timeout (or printed nothing for its idle timeout) and was killed with
    its whole process group."""


def _stderr_tail(stderr: bytes, secrets: tuple[str, ...]) -> str:
    """The last lines of stderr, redacted, at most about FAILURE_TAIL_CHARS characters."""
    # redacted before the cut, so a secret split by the cut cannot show its tail
    text = redact(stderr.decode("utf-8", "replace"), secrets).strip()
    if len(text) <= FAILURE_TAIL_CHARS:
        return text
    text = text[-FAILURE_TAIL_CHARS:]
    first_break = text.find("\n")
    if 0 <= first_break < len(text) - 1:
        text = text[first_break + 1:]  # start at a whole line
    return "..." + text.strip()


def _describe_failure(result: CommandResult, secrets: tuple[str, ...]) -> str:
    tail = _stderr_tail(result.stderr, secrets)
    if result.abandoned:
        what = "timed out and " if result.timed_out else ""
        message = f"{result.name} {what}did not end even after SIGKILL to its process group"
        return f"{message}: {tail}" if tail else message
    if result.timed_out:
        limit = "its timeout" if result.timeout is None else f"{_seconds(result.timeout)} s"
        what = f"printed nothing for {limit}" if result.idle else f"timed out after {limit}"
        message = f"{result.name} {what} and was killed with its process group"
        return f"{message}; stderr: {tail}" if tail else message
    if result.signal is not None:
        message = f"{result.name} was killed by signal {result.signal}"
        return f"{message}: {tail}" if tail else message
    message = f"{result.name} failed with exit status {result.exit_code}"
    return f"{message}: {tail}" if tail else f"{message} and wrote nothing to stderr"


def _seconds(value: float) -> str:
    """300 -> "300", 0.5 -> "0.5"."""
    return f"{value:.3f}".rstrip("0").rstrip(".")
