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
  happens on timeout, on cancel/terminate and on shutdown (`stop_all`).
* stdout and stderr are captured separately and bounded, and the pipes are always drained, so
  a child never blocks on a full pipe and our memory stays flat whatever it prints.
* At most ``max_running`` commands run at once; beyond that `Busy` (503) is raised, never a
  queue.  ``essential`` commands (the facts orchestrator's status poll and the safety checks
  read) may also use a small reserve, so a flood of custom commands cannot starve them.
* Results and failures are :mod:`orchagent.commands`' types; a failure message quotes
  stderr's tail with the runner's ``secrets`` redacted.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
from typing import Mapping, Sequence

from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from orchagent import logs
from orchagent.commands import CommandFailed, CommandResult, CommandTimedOut
from orchagent.errors import AgentError, Busy
from orchagent.interfaces import ThreadRunner
from orchagent.threads import thread_runner

log = logs.logger(__name__)

STDERR_KEPT = 64 * 1024  # the tail of stderr a failure message can quote from
SYSTEM_PATH = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")  # where the admin tools live
KILL_BACKUP_SECONDS = 10.0  # after SIGKILL, how long to wait before giving up on a group
GROUP_POLL_SECONDS = 0.05  # how often a dying group is checked for survivors
ESSENTIAL_RESERVE = 4  # slots beyond max_running that only essential commands may use
BUSY_RETRY_SECONDS = 5  # Retry-After of a command refused for want of a slot


def _live_group_member(pgid: int) -> bool:
    """Whether a process of group ``pgid`` is still running (zombies cannot write anything).

    Needed because orphans left as zombies (PID 1 of a container may never reap them) keep
    a group "existing" for kill(2) forever.  Reads /proc, so it runs in a thread.
    """
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rpartition(b")")[2].split()
        except OSError:
            continue  # it ended while we looked
        state, group = fields[0], int(fields[2])
        if group == pgid and state not in (b"Z", b"X"):
            return True
    return False


class _OutputCollector(ProcessProtocol):
    """Keeps the head of stdout and the tail of stderr, reading (and dropping) everything else."""

    def __init__(self, command: RunningCommand, max_output: int):
        self._command = command
        self._max_output = max_output
        self._stdout: list[bytes] = []
        self._stdout_size = 0
        self.stdout_truncated = False
        self._stderr = bytearray()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self._command._output_seen()
        if childFD == 1:
            room = self._max_output - self._stdout_size
            if len(data) > room:
                self.stdout_truncated = True
                data = data[:room]
            if data:
                self._stdout.append(data)
                self._stdout_size += len(data)
        elif childFD == 2:
            self._stderr += data
            if len(self._stderr) > 2 * STDERR_KEPT:
                del self._stderr[:-STDERR_KEPT]

    def stdout(self) -> bytes:
        return b"".join(self._stdout)

    def stderr(self) -> bytes:
        return bytes(self._stderr[-STDERR_KEPT:])

    def processEnded(self, reason) -> None:
        # processEnded, not processExited: only now has every pipe been drained and closed.
        self._command._leader_ended(reason.value.exitCode, reason.value.signal)


class RunningCommand:
    """A spawned command: its ``pid`` (also its process group), its ``result`` and ``terminate``.

    ``result`` fires with a CommandResult or fails with CommandFailed/CommandTimedOut as
    described on `ProcessRunner.run`.  Cancelling it terminates the group (the Deferred fails
    with CancelledError at once; `ProcessRunner.stop_all` still waits for the group).
    """

    def __init__(self, runner: ProcessRunner, *, name: str, argv: Sequence[str],
                 timeout: float | None, idle_timeout: float | None, check: bool, max_output: int):
        self._runner = runner
        self._reactor = runner._reactor
        self.name = name
        self._argv = tuple(argv)
        self._timeout = timeout
        self._idle_timeout = idle_timeout
        self._check = check
        self.pid: int | None = None
        self.result: Deferred = Deferred(self._cancel)
        self._output = _OutputCollector(self, max_output)
        self._transport = None
        self._started_at = self._reactor.seconds()
        self._timeout_call = None  # the wall-clock timer
        self._idle_call = None  # the no-output timer, pushed back by every chunk of output
        self._timed_out = False
        self._idle = False  # ... and it was the no-output timer that fired
        self._exit: tuple[int | None, int | None] | None = None  # (exit code, signal) once ended
        self._terminating = False  # the kill sequence has started
        self._terminated = False  # ... and has finished
        self._survivor: Failure | None = None  # set when the group outlived SIGKILL
        self._terminate_waiters: list[Deferred] = []

    # -- life cycle, driven by ProcessRunner and the protocol ------------------------------

    def _spawned(self, transport) -> None:
        self._transport = transport
        self.pid = transport.pid
        if self._timeout is not None:
            self._timeout_call = self._reactor.callLater(self._timeout, self._timed_out_now, False)
        if self._idle_timeout is not None:
            self._idle_call = self._reactor.callLater(self._idle_timeout, self._timed_out_now, True)

    def _output_seen(self) -> None:
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.reset(self._idle_timeout)

    def _timed_out_now(self, idle: bool) -> None:
        self._cancel_timers()
        self._timed_out, self._idle = True, idle
        if idle:
            log.warn("{name} (pid {pid}) printed nothing for {timeout} s; killing its process group",
                     name=self.name, pid=self.pid, timeout=self._idle_timeout)
        else:
            log.warn("{name} (pid {pid}) timed out after {timeout} s; killing its process group",
                     name=self.name, pid=self.pid, timeout=self._timeout)
        self._consume(self.terminate())

    def _leader_ended(self, exit_code: int | None, signal_number: int | None) -> None:
        self._exit = (exit_code, signal_number)
        self._cancel_timers()
        log.debug("{name} (pid {pid}) ended: exit status {exit_code}, signal {signal}, "
                  "after {elapsed:.3f} s", name=self.name, pid=self.pid, exit_code=exit_code,
                  signal=signal_number, elapsed=self._reactor.seconds() - self._started_at)
        if not self._terminating:
            # Ended on its own: leave anything it started in its group alone (a service start
            # command may have launched a daemon there).  Its slot is free before its caller
            # resumes, so a caller's next command may take it.
            self._runner._forget(self)
            self._deliver()

    def _cancel_timers(self) -> None:
        for call in (self._timeout_call, self._idle_call):
            if call is not None and call.active():
                call.cancel()
        self._timeout_call = self._idle_call = None

    def _cancel(self, _result: Deferred) -> None:
        self._consume(self.terminate())

    def _deliver(self) -> None:
        """Fire ``result`` (unless a cancel already did)."""
        if self.result.called:
            return
        exit_code, signal_number = self._exit if self._exit is not None else (None, None)
        result = CommandResult(
            name=self.name, argv=self._argv, exit_code=exit_code, signal=signal_number,
            stdout=self._output.stdout(), stderr=self._output.stderr(),
            stdout_truncated=self._output.stdout_truncated, timed_out=self._timed_out,
            timeout=self._idle_timeout if self._idle else self._timeout, idle=self._idle)
        if result.timed_out:
            self.result.errback(CommandTimedOut(result, self._runner._secrets))
        elif (self._check and not result.ok) or result.abandoned:
            self.result.errback(CommandFailed(result, self._runner._secrets))
        else:
            self.result.callback(result)

    # -- termination -----------------------------------------------------------------------

    def terminate(self) -> Deferred:
        """Kill the process group (TERM, then KILL); fire once no member is left running.

        Fails with AgentError if the group survives SIGKILL (a process stuck in the kernel).
        A command that already ended on its own is left alone.
        """
        if self._terminated:
            return succeed(None) if self._survivor is None else fail(self._survivor)
        if self._exit is not None and not self._terminating:
            return succeed(None)
        waiter = Deferred()
        self._terminate_waiters.append(waiter)
        if not self._terminating:
            self._terminating = True
            Deferred.fromCoroutine(self._kill_group()).addBoth(self._killed)
        return waiter

    async def _kill_group(self) -> bool:
        self._signal_group(signal.SIGTERM)
        if await self._group_ends_within(self._runner._kill_grace):
            return True
        log.warn("{name} (pid {pid}) survived SIGTERM for {grace} s; sending SIGKILL to its "
                 "process group", name=self.name, pid=self.pid, grace=self._runner._kill_grace)
        self._signal_group(signal.SIGKILL)
        return await self._group_ends_within(KILL_BACKUP_SECONDS)

    def _signal_group(self, signal_number: int) -> None:
        try:
            os.killpg(self.pid, signal_number)
        except ProcessLookupError:
            # No such group: either all of it is gone, or setsid has not run yet in the child
            # (then the child itself is the only process to stop).
            try:
                self._transport.signalProcess(signal_number)
            except (ProcessExitedAlready, ProcessLookupError):
                pass

    async def _group_ends_within(self, seconds: float) -> bool:
        deadline = self._reactor.seconds() + seconds
        while True:
            if self._transport.pid is None and not await self._group_alive():  # all reaped
                if self._exit is None:
                    # Our pipes are still open, so a process that left the group (a daemon
                    # calling setsid) holds them: it is not ours to kill, so stop reading.
                    self._transport.loseConnection()
                if self._exit is not None:
                    return True
            if self._reactor.seconds() >= deadline:
                return False
            await deferLater(self._reactor, GROUP_POLL_SECONDS, lambda: None)

    async def _group_alive(self) -> bool:
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # someone else's process holds the id: it is not ours to judge
        return await self._runner._in_thread(_live_group_member, self.pid)

    def _killed(self, outcome: bool | Failure) -> None:
        self._terminated = True
        if outcome is not True:
            if isinstance(outcome, Failure):
                log.failure("killing {name} (pid {pid}) failed", outcome, name=self.name,
                            pid=self.pid)
            log.error("{name} (pid {pid}) did not end after SIGKILL to its process group; "
                      "giving up on it", name=self.name, pid=self.pid)
            self._survivor = Failure(AgentError(
                f"{self.name} (pid {self.pid}) did not end even after SIGKILL to its process "
                f"group; it is probably stuck in the kernel (D state): check `pgrep -a -g {self.pid}`"))
        self._cancel_timers()
        self._runner._forget(self)
        self._deliver()
        waiters, self._terminate_waiters = self._terminate_waiters, []
        for waiter in waiters:
            if self._survivor is None:
                waiter.callback(None)
            else:
                waiter.errback(self._survivor)

    @staticmethod
    def _consume(termination: Deferred) -> None:
        """Termination failures are logged in `_killed`; callers that do not wait drop them."""
        termination.addErrback(lambda _failure: None)


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
            idle_timeout: float | None = None) -> Deferred:
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
        """
        return _result_of(self.start, argv, name=name, timeout=timeout, privileged=privileged,
                          essential=essential, parsed=parsed, check=check, stdin_path=stdin_path,
                          stdout_path=stdout_path, cwd=cwd, env=env, idle_timeout=idle_timeout)

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
               idle_timeout: float | None = None) -> RunningCommand:
        if not argv:
            raise ValueError("an empty argv")
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

        command = RunningCommand(self, name=name, argv=argv, timeout=timeout, idle_timeout=idle_timeout,
                                 check=check, max_output=self._max_output)
        opened: list[int] = []
        try:
            stdin_fd = self._open(stdin_path or os.devnull, os.O_RDONLY, name, opened)
            stdout = "r" if stdout_path is None else self._open(
                stdout_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, name, opened)
            transport = self._reactor.spawnProcess(
                command._output, setsid, full_argv, env=child_env, path=cwd,
                childFDs={0: stdin_fd, 1: stdout, 2: "r"})
        except OSError as e:
            raise AgentError(f"cannot start {name}: {e}") from e
        finally:
            for fd in opened:
                os.close(fd)
        command._spawned(transport)
        self._running.add(command)
        command.result.addBoth(self._count_outcome)
        return command

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
