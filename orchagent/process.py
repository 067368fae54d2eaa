"""The only place that spawns processes.  (INTERFACE STUB: being implemented.)

Rules (contract "Our rules" 3 and 4):

* argv lists only.  A configured shell string (an admin-written config value) runs as
  ``bash -c '<command> "$@"' orchagent <arg1> <arg2>...`` so request-derived arguments arrive
  as literal argv elements and are never parsed by a shell.
* Every command runs in its own process group (``setsid``), has a wall-clock timeout, and is
  killed as a group: SIGTERM, then SIGKILL after a grace period, on timeout, on cancel and on
  shutdown.
* stdout and stderr are captured separately and bounded.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import attrs
from twisted.internet.defer import Deferred

from orchagent.errors import AgentError


@attrs.frozen
class CommandResult:
    name: str  # what messages call it: argv[0], or the config key of a configured command
    argv: tuple[str, ...]
    exit_code: int | None  # None when ended by a signal
    signal: int | None
    stdout: bytes  # the first ``max_output`` bytes
    stderr: bytes  # the last 64 KiB
    stdout_truncated: bool
    timed_out: bool

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def text(self) -> str:
        """stdout decoded as UTF-8 (invalid bytes replaced)."""
        return self.stdout.decode("utf-8", "replace")


class CommandFailed(AgentError):
    """A command exited non-zero or by a signal; the message names it and quotes stderr's tail."""

    def __init__(self, result: CommandResult):
        super().__init__(_describe_failure(result))
        self.result = result


class CommandTimedOut(CommandFailed):
    """A command ran past its timeout and was killed with its whole process group."""


def _describe_failure(result: CommandResult) -> str:
    raise NotImplementedError


class ProcessRunner:
    def __init__(self, reactor, *, default_timeout: float, exec_with_sudo: bool = False,
                 max_output: int = 1 << 20, environ: Mapping[str, str] | None = None):
        raise NotImplementedError

    def run(self, argv: Sequence[str], *, name: str | None = None, timeout: float | None | object = ...,
            privileged: bool = False, parsed: bool = False, check: bool = True,
            stdin_path: str | None = None, stdout_path: str | None = None,
            cwd: str | None = None, env: Mapping[str, str] | None = None) -> Deferred:
        raise NotImplementedError

    def run_configured(self, command: str, args: Sequence[str] = (), *, name: str, **options) -> Deferred:
        raise NotImplementedError

    def stop_all(self) -> Deferred:
        raise NotImplementedError
