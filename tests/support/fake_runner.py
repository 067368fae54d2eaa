"""The one stand-in for ``orchagent.process.ProcessRunner`` in tests: records every command and
answers it as configured, without spawning anything (or, with :meth:`FakeRunner.around`, passes it
on to a real runner and only records)."""

from __future__ import annotations

import os
from typing import Callable

import attrs
from twisted.internet.defer import Deferred, fail, succeed

from orchagent.commands import CommandFailed, CommandResult, CommandTimedOut

# A tool emulated in-process: argv -> (exit code, stdout, stderr), or None when it does not know argv[0].
Tool = Callable[[list], "tuple[int, bytes | str, bytes | str] | None"]


def command_result(name: str = "command", argv=None, *, exit_code: int | None = 0, stdout: bytes = b"",
                   stderr: bytes = b"", signal: int | None = None, timed_out: bool = False,
                   timeout: float | None = None) -> CommandResult:
    """What the real runner reports for a command that ended (``argv`` defaults to just ``name``)."""
    return CommandResult(name=name, argv=tuple(argv or (name,)), exit_code=exit_code, signal=signal, stdout=stdout,
                         stderr=stderr, stdout_truncated=False, timed_out=timed_out, timeout=timeout)


@attrs.frozen
class Call:
    """One command asked for: ``configured`` ones keep the config key's ``args`` apart from the shell."""

    name: str
    argv: tuple[str, ...]
    options: dict
    configured: bool = False
    args: tuple[str, ...] = ()


class FakeCommand:
    """A started command: the test fires ``result`` to end it; ``terminate`` ends it as killed."""

    def __init__(self, name: str):
        self.name = name
        self.pid = 0
        self.result = Deferred()
        self.terminated = False

    def terminate(self):
        self.terminated = True
        if not self.result.called:
            self.result.errback(RuntimeError("killed"))
        return succeed(None)


class FakeRunner:
    """Answers ``run``/``run_configured`` with ``stdout[name]``, ``stderr[name]`` and ``exit_codes[name]``
    (default 0, empty output; text or bytes).  Commands named in ``timeouts`` time out, those in
    ``errors`` fail with that error (e.g. Busy: no slot), those in ``held`` wait, as `FakeCommand`s in
    ``started``, until the test fires their ``result``.  ``tool`` emulates programs in-process
    (``run`` only).  ``start``/``start_configured`` hand out `FakeCommand`s kept in ``started``.

    ``stderr[name]`` may be a function of what the command's ``stdin_path`` held (kept in
    ``stdin_seen[name]``, the latest, and in ``inputs``, every one in order).
    """

    def __init__(self, stdout: dict | None = None, exit_codes: dict[str, int] | None = None,
                 stderr: dict | None = None, timeouts: tuple[str, ...] = (),
                 errors: dict[str, Exception] | None = None, held: tuple[str, ...] = (),
                 tool: Tool | None = None):
        self.stdout = stdout or {}
        self.exit_codes = exit_codes or {}
        self.stderr = stderr or {}
        self.timeouts = timeouts
        self.errors = errors or {}
        self.held = held
        self.tool = tool
        self.calls: list[Call] = []
        self.stdin_seen: dict[str, bytes] = {}
        self.inputs: list[bytes] = []
        self.started: list[FakeCommand] = []
        self._real = None

    @classmethod
    def around(cls, real) -> FakeRunner:
        """A runner that records every command and has the real runner ``real`` run it."""
        runner = cls()
        runner._real = real
        return runner

    def names(self) -> list[str]:
        return [call.name for call in self.calls]

    @property
    def commands(self) -> list[list[str]]:
        """Every command as a list: argv, or ``["configured", name, *args]`` for a config key's."""
        return [["configured", call.name, *call.args] if call.configured else list(call.argv)
                for call in self.calls]

    def run(self, argv, *, name=None, **options):
        call = self._record(Call(name or os.path.basename(argv[0]), tuple(argv), options))
        if self._real is not None:
            return self._real.run(argv, name=name, **options)
        return self._answer(call)

    def run_configured(self, command, args=(), *, name, **options):
        call = self._record(Call(name, ("bash", "-c", command, "orchagent", *args), options, True, tuple(args)))
        if self._real is not None:
            return self._real.run_configured(command, args, name=name, **options)
        return self._answer(call)

    def start(self, argv, *, name=None, **options):
        return self._started(Call(name or os.path.basename(argv[0]), tuple(argv), options))

    def start_configured(self, command, args=(), *, name, **options):
        return self._started(Call(name, ("bash", "-c", command, "orchagent", *args), options, True, tuple(args)))

    def _record(self, call: Call) -> Call:
        self.calls.append(call)
        return call

    def _started(self, call: Call) -> FakeCommand:
        self._record(call)
        if call.name in self.errors:
            raise self.errors[call.name]  # as the real runner raises Busy at once
        self.started.append(FakeCommand(call.name))
        return self.started[-1]

    def _answer(self, call: Call) -> Deferred:
        if call.name in self.errors:
            return fail(self.errors[call.name])
        if call.name in self.held:
            self.started.append(FakeCommand(call.name))
            return self.started[-1].result
        options = call.options
        if options.get("stdin_path"):
            with open(options["stdin_path"], "rb") as f:
                self.stdin_seen[call.name] = f.read()
            self.inputs.append(self.stdin_seen[call.name])
        emulated = self.tool(list(call.argv)) if self.tool and not call.configured else None
        if emulated is not None:
            code, stdout, stderr = emulated
        else:
            code, stdout, stderr = self.exit_codes.get(call.name, 0), self.stdout.get(call.name, b""), \
                self.stderr.get(call.name, b"")
            if callable(stderr):
                stderr = stderr(self.stdin_seen.get(call.name, b""))
        stdout, stderr = (text.encode() if isinstance(text, str) else text for text in (stdout, stderr))
        if options.get("stdout_path"):
            with open(options["stdout_path"], "ab") as f:
                f.write(stdout)
            stdout = b""
        timed_out = call.name in self.timeouts
        result = command_result(call.name, call.argv, exit_code=None if timed_out else code,
                                signal=15 if timed_out else None, stdout=stdout, stderr=stderr,
                                timed_out=timed_out, timeout=5.0)
        if timed_out:
            return fail(CommandTimedOut(result))
        if not result.ok and options.get("check", True):
            return fail(CommandFailed(result))
        return succeed(result)
