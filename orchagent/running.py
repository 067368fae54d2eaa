"""One spawned command's life: its output, its two timers, and killing its process group.

:class:`orchagent.process.ProcessRunner` spawns; each command is then a :class:`RunningCommand`.
stdout and stderr are kept apart and bounded (the head of stdout, the tail of stderr) and always
read, so a child never blocks on a full pipe.  A wall-clock timeout and an idle timeout (no
output for N seconds) share one ``_cancel_timers``; either, a cancel, ``terminate`` or shutdown
kills the group: SIGTERM, SIGKILL after ``kill_grace``, then a backup timer that gives up and
says so.
"""

from __future__ import annotations

import os
import signal
from typing import Callable, Sequence

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from orchagent import logs
from orchagent.commands import CommandFailed, CommandResult, CommandTimedOut
from orchagent.errors import AgentError
from orchagent.interfaces import ThreadRunner

log = logs.logger(__name__)

STDERR_KEPT = 64 * 1024  # the tail of stderr a failure message can quote from
KILL_BACKUP_SECONDS = 10.0  # after SIGKILL, how long to wait before giving up on a group
GROUP_POLL_SECONDS = 0.05  # how often a dying group is checked for survivors


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
    described on :meth:`orchagent.process.ProcessRunner.run`.  Cancelling it terminates the
    group (the Deferred fails with CancelledError at once; ``ProcessRunner.stop_all`` still
    waits for the group).
    """

    def __init__(self, reactor, *, name: str, argv: Sequence[str], timeout: float | None,
                 idle_timeout: float | None, check: bool, max_output: int, kill_grace: float,
                 secrets: tuple[str, ...], in_thread: ThreadRunner, on_end: Callable[[RunningCommand], None]):
        self._reactor = reactor
        self._kill_grace = kill_grace
        self._secrets = secrets
        self._in_thread = in_thread
        self._on_end = on_end  # the runner frees its slot
        self.name = name
        self._argv = tuple(argv)
        self._timeout = timeout
        self._idle_timeout = idle_timeout
        self._check = check
        self.pid: int | None = None
        self.result: Deferred = Deferred(self._cancel)
        self.protocol = _OutputCollector(self, max_output)  # what the runner spawns it with
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

    def spawned(self, transport) -> None:
        """The runner spawned it: start its timers."""
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
            self._on_end(self)
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
            stdout=self.protocol.stdout(), stderr=self.protocol.stderr(),
            stdout_truncated=self.protocol.stdout_truncated, timed_out=self._timed_out,
            timeout=self._idle_timeout if self._idle else self._timeout, idle=self._idle)
        if result.timed_out:
            self.result.errback(CommandTimedOut(result, self._secrets))
        elif (self._check and not result.ok) or result.abandoned:
            self.result.errback(CommandFailed(result, self._secrets))
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
            self._cancel_timers()  # a timer firing while the group dies would misreport why it ended
            Deferred.fromCoroutine(self._kill_group()).addBoth(self._killed)
        return waiter

    async def _kill_group(self) -> bool:
        self._signal_group(signal.SIGTERM)
        if await self._group_ends_within(self._kill_grace):
            return True
        log.warn("{name} (pid {pid}) survived SIGTERM for {grace} s; sending SIGKILL to its "
                 "process group", name=self.name, pid=self.pid, grace=self._kill_grace)
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
        return await self._in_thread(_live_group_member, self.pid)

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
        self._on_end(self)
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
