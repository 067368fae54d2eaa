"""The only place that spawns processes.

Rules (contract "Our rules" 3 and 4):

* argv lists only.  A configured shell string (an admin-written config value) runs as
  ``bash -c '<command> "$@"' orchagent <arg1> <arg2>...`` so request-derived arguments arrive
  as literal argv elements and are never parsed by a shell.
* Every command runs in its own process group and session: the ``setsid`` binary is put in
  front of argv (Twisted >= 23.8 may spawn with ``posix_spawnp``, which skips any pre-exec
  hook).  Twisted's children are never group leaders, so ``setsid`` calls setsid(2) and execs
  in place: the pid we get is also the id of the new group.
* Every command has a wall-clock timeout (unless the caller supervises it itself), and may have
  an idle timeout (no output for N seconds: a stalled stream); either kills it as a group:
  SIGTERM, SIGKILL after a grace period, then a backup timer that gives up and says so.  This
  happens on timeout, on cancel/terminate and on shutdown (`stop_all`).  One command's life
  (output, timers, the kill) is :class:`orchagent.running.RunningCommand`.
* stdout and stderr are captured separately and bounded, and the pipes are always drained, so
  a child never blocks on a full pipe and our memory stays flat whatever it prints.  A
  streaming command (a backup tool's stream, an extractor fed as data arrives) gets a pipe end
  of the caller's instead (``stdout_fd``/``stdin_fd``): the caller's worker thread reads or
  writes the other end, and the kernel pipe is the backpressure.
* At most ``max_running`` commands run at once; beyond that `Busy` (503) is raised, never a
  queue.  ``essential`` commands (the facts orchestrator's status poll and the safety checks
  read) may also use a small reserve, so a flood of custom commands cannot starve them.
* Results and failures are :mod:`orchagent.commands`' types; a failure message quotes
  stderr's tail with the runner's ``secrets`` redacted.
"""

from __future__ import annotations

import collections
import fcntl
import os
import shutil
from typing import Mapping, Sequence

from twisted.internet.defer import Deferred, DeferredList, fail
from twisted.python.failure import Failure

from orchagent import logs
from orchagent.commands import CommandFailed, CommandTimedOut
from orchagent.errors import AgentError, Busy
from orchagent.interfaces import ThreadRunner
from orchagent.running import RunningCommand
from orchagent.threads import thread_runner

log = logs.logger(__name__)

SYSTEM_PATH = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")  # where the admin tools live
ESSENTIAL_RESERVE = 4  # slots beyond max_running that only essential commands may use
BUSY_RETRY_SECONDS = 5  # Retry-After of a command refused for want of a slot
#: A streaming command's pipe: 1 MiB (Linux's default ``pipe-max-size``) instead of 64 KiB, so the tool
#: goes on writing (a backup) or has a whole block to read (an extractor) while the worker thread at
#: the other end handles a 1 MiB block (``bench/RESULTS.md``, "Hot seed").
STREAM_PIPE_BYTES = 1 << 20


class ProcessRunner:
    """Spawns every OS command orchagent runs, with the rules in the module docstring.

    ``environ`` (default ``os.environ``) is the base of every child environment; PATH gets
    any of /usr/sbin:/usr/bin:/sbin:/bin it lacks (as V1 did), so admin tools are found even
    when the agent was started with a minimal PATH.  ``kill_grace`` is how long a group gets
    between SIGTERM and SIGKILL.  ``max_running`` (None: no limit) caps the commands running at
    once, ``reserve`` more for essential ones.  ``secrets`` are redacted from failure messages.
    ``in_thread`` (default: the reactor's pool) runs the /proc scans of dying groups.
    """

    def __init__(self, reactor, *, default_timeout: float, exec_with_sudo: bool = False,
                 max_output: int = 1 << 20, environ: Mapping[str, str] | None = None,
                 kill_grace: float = 5.0, max_running: int | None = None,
                 reserve: int = ESSENTIAL_RESERVE, secrets: Sequence[str] = (),
                 in_thread: ThreadRunner | None = None):
        self._reactor = reactor
        self._in_thread = in_thread or thread_runner(reactor)
        self._default_timeout = default_timeout
        self._exec_with_sudo = exec_with_sudo
        self._max_output = max_output
        self._environ = os.environ if environ is None else environ
        self._kill_grace = kill_grace
        self._max_running = max_running
        self._reserve = reserve
        self._secrets = tuple(secret for secret in secrets if secret)
        self._running: set[RunningCommand] = set()
        self.outcomes: collections.Counter[str] = collections.Counter()  # for metrics

    def run(self, argv: Sequence[str], *, name: str | None = None, timeout: float | None | object = ...,
            privileged: bool = False, essential: bool = False, parsed: bool = False,
            check: bool = True, stdin_path: str | None = None, stdout_path: str | None = None,
            cwd: str | None = None, env: Mapping[str, str] | None = None,
            idle_timeout: float | None = None, stdin_fd: int | None = None,
            stdout_fd: int | None = None) -> Deferred:
        """Run argv to completion; Deferred[CommandResult].

        ``timeout``: seconds of wall-clock time (default: the runner's), ``None`` for no limit
        (only for work that supervises itself).  ``idle_timeout``: seconds without output (on
        stderr, or stdout unless ``stdout_path``) after which it is killed the same way, for
        streaming commands whose silence means a stall; None: no such limit.  ``privileged``
        adds ``sudo -n`` when the runner was built with ``exec_with_sudo``.  ``essential`` lets it
        use the reserve slots.
        ``parsed`` sets LC_ALL=C for tools whose output we parse.  When every slot is taken it
        fails with Busy.  stdin is /dev/null unless ``stdin_path``; ``stdout_path`` appends
        stdout to that file (created mode 0600 if missing) instead of capturing it.  With
        ``check``, a non-zero exit or a death by signal fails with CommandFailed; a timeout always
        fails with CommandTimedOut.  Cancelling the Deferred kills the process group.

        ``stdin_fd``/``stdout_fd`` (streaming): a descriptor the child gets as its stdin/stdout,
        typically one end of a :func:`stream_pipe` whose other end a worker thread writes or reads.
        The runner takes it over: it is closed here once the child has it (also when the spawn
        fails), so the caller's end sees EOF when the child ends.  With ``stdout_fd`` only stderr
        counts as output for ``idle_timeout``.
        """
        return _result_of(self.start, argv, name=name, timeout=timeout, privileged=privileged,
                          essential=essential, parsed=parsed, check=check, stdin_path=stdin_path,
                          stdout_path=stdout_path, cwd=cwd, env=env, idle_timeout=idle_timeout,
                          stdin_fd=stdin_fd, stdout_fd=stdout_fd)

    def run_configured(self, command: str, args: Sequence[str] = (), *, name: str, **options) -> Deferred:
        """Run an admin-written shell string with ``args`` as literal positional parameters.

        ``name`` is the config key, used in messages and logs instead of the command text
        (which may hold credentials).
        """
        return _result_of(self.start_configured, command, args, name=name, **options)

    def start(self, argv: Sequence[str], *, name: str | None = None, **options) -> RunningCommand:
        """Like `run`, for long-running work: the caller gets ``pid`` and ``terminate()``.

        Raises AgentError if the command cannot be spawned at all, Busy if no slot is free.
        """
        return self._start(argv, name=name, shown_args=None, **options)

    def start_configured(self, command: str, args: Sequence[str] = (), *, name: str,
                         **options) -> RunningCommand:
        """`run_configured` for long-running work (e.g. seed send/receive commands)."""
        return self._start(_configured_argv(command, args), name=name, shown_args=tuple(args),
                           **options)

    def stop_all(self) -> Deferred:
        """Terminate every running command; fire once all have ended (at shutdown)."""
        running = list(self._running)
        if running:
            log.info("stopping {count} running command(s)", count=len(running))
        done = DeferredList([command.terminate() for command in running], consumeErrors=True)
        return done.addCallback(lambda _: None)

    # -- internals -------------------------------------------------------------------------

    def _start(self, argv: Sequence[str], *, name: str | None, shown_args: tuple[str, ...] | None,
               timeout: float | None | object = ..., privileged: bool = False,
               essential: bool = False, parsed: bool = False, check: bool = True,
               stdin_path: str | None = None, stdout_path: str | None = None,
               cwd: str | None = None, env: Mapping[str, str] | None = None,
               idle_timeout: float | None = None, stdin_fd: int | None = None,
               stdout_fd: int | None = None) -> RunningCommand:
        opened = [fd for fd in (stdin_fd, stdout_fd) if fd is not None]  # ours now: closed below
        try:
            if not argv:
                raise ValueError("an empty argv")
            if stdin_path is not None and stdin_fd is not None or stdout_path is not None and stdout_fd is not None:
                raise ValueError("a path and a descriptor for the same standard stream")
            name = name or os.path.basename(argv[0])
            self._refuse_when_full(name, essential)
            timeout = self._default_timeout if timeout is ... else timeout
            child_env = self._child_environment(env, parsed)
            setsid = shutil.which("setsid", path=child_env["PATH"])
            if setsid is None:
                raise AgentError(f"cannot run {name}: the setsid program (util-linux) is not in "
                                 f"PATH {child_env['PATH']}")
            prefix = ["sudo", "-n"] if privileged and self._exec_with_sudo else []
            full_argv = [setsid, "--wait", *prefix, *argv]
            if shown_args is None:
                log.debug("running {name}: {argv}", name=name, argv=[*prefix, *argv])
            else:
                log.debug("running configured command {name} with arguments {args}",
                          name=name, args=list(shown_args))

            command = RunningCommand(self._reactor, name=name, argv=argv, timeout=timeout, idle_timeout=idle_timeout,
                                     check=check, max_output=self._max_output, kill_grace=self._kill_grace,
                                     secrets=self._secrets, in_thread=self._in_thread, on_end=self._forget)
            try:
                if stdin_fd is None:
                    stdin_fd = self._open(stdin_path or os.devnull, os.O_RDONLY, name, opened)
                stdout: int | str = "r" if stdout_path is None else self._open(
                    stdout_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, name, opened)
                if stdout_fd is not None:
                    stdout = stdout_fd
                transport = self._reactor.spawnProcess(
                    command.protocol, setsid, full_argv, env=child_env, path=cwd,
                    childFDs={0: stdin_fd, 1: stdout, 2: "r"})
            except OSError as e:
                raise AgentError(f"cannot start {name}: {e}") from e
            command.spawned(transport)
            self._running.add(command)
            command.result.addBoth(self._count_outcome)
            return command
        finally:
            for fd in opened:
                os.close(fd)

    @staticmethod
    def _open(path: str, flags: int, name: str, opened: list[int]) -> int:
        try:
            fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise AgentError(f"cannot start {name}: cannot open {path}: {e.strerror}") from e
        opened.append(fd)
        return fd

    def _child_environment(self, env: Mapping[str, str] | None, parsed: bool) -> dict[str, str]:
        child = dict(self._environ)
        path = [entry for entry in child.get("PATH", "").split(os.pathsep) if entry]
        child["PATH"] = os.pathsep.join(path + [entry for entry in SYSTEM_PATH if entry not in path])
        child.update(env or {})
        if parsed:
            child["LC_ALL"] = "C"
        return child

    def _count_outcome(self, outcome):
        """Tally how commands end; passes the outcome on unchanged."""
        if not isinstance(outcome, Failure):
            self.outcomes["succeeded"] += 1
        elif outcome.check(CommandTimedOut):
            self.outcomes["timed_out"] += 1
        elif outcome.check(CommandFailed):
            self.outcomes["failed"] += 1
        return outcome
    def _refuse_when_full(self, name: str, essential: bool) -> None:
        """Refuse (Busy) when the commands still running, dying ones included, fill the cap."""
        if self._max_running is None:
            return
        limit = self._max_running + (self._reserve if essential else 0)
        if len(self._running) >= limit:
            raise Busy(f"{name} not started: the agent is running {len(self._running)} commands, as many as "
                       f"MaxConcurrentCommands allows; retry later", BUSY_RETRY_SECONDS)

    def _forget(self, command: RunningCommand) -> None:
        self._running.discard(command)


def stream_pipe() -> tuple[int, int]:
    """A pipe (read end, write end) for a streaming command's ``stdin_fd`` or ``stdout_fd``, of
    :data:`STREAM_PIPE_BYTES`, or of the default size where the system refuses more."""
    read_end, write_end = os.pipe()
    try:
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, STREAM_PIPE_BYTES)
    except OSError:
        pass  # pipe-max-size lowered, or the user's pipe quota spent: a smaller pipe only costs speed
    return read_end, write_end


def _configured_argv(command: str, args: Sequence[str]) -> list[str]:
    """``bash -c '<command> "$@"' orchagent args...``: args stay data, never shell text."""
    script = f'{command} "$@"' if args else command
    return ["bash", "-c", script, "orchagent", *args]


def _result_of(start, *args, **options) -> Deferred:
    """``start(...).result``, with a failure to spawn delivered through the Deferred too."""
    try:
        return start(*args, **options).result
    except AgentError:
        return fail()
