"""ProcessRunner against real processes: process groups, literal arguments, bounded output."""

import hashlib
import os
import resource
import signal
import time

from twisted.internet import reactor, threads
from twisted.internet.defer import CancelledError
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from orchagent import logs
from orchagent.commands import CommandFailed, CommandTimedOut
from orchagent.errors import AgentError, Busy
from orchagent.process import ProcessRunner
from testbed.waiting import alive
from tests.support.deferreds import inline

GRACE = 0.5  # short SIGTERM grace so the SIGKILL paths stay fast


async def pids_from(path: str, count: int) -> list[int]:
    """The pids a test command wrote to ``path``, one a line, once all are there."""
    for _ in range(200):
        if os.path.exists(path):
            with open(path) as f:
                pids = [int(line) for line in f.read().split()]
            if len(pids) >= count:
                return pids
        await deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"the command never wrote {count} pids to {path}")


# A process tree whose members all ignore SIGTERM: bash, and a backgrounded sleep.
STUBBORN_TREE = 'trap "" TERM; sleep 1000 & echo $$ > "$1"; echo $! >> "$1"; wait'


def _drain(fd: int) -> int:
    """Read ``fd`` to its end (in a thread); the byte count."""
    total = 0
    while chunk := os.read(fd, 1 << 20):
        total += len(chunk)
    return total


class ProcessRunnerTests(TestCase):
    """ProcessRunner on real processes: whole groups die on timeout or cancel, literal arguments, bounded output."""

    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.runner = ProcessRunner(reactor, default_timeout=10, kill_grace=GRACE)
        self.addCleanup(self.runner.stop_all)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    # -- process groups ------------------------------------------------------------------

    @inline
    async def test_timeout_kills_grandchildren(self):
        runner = ProcessRunner(reactor, default_timeout=1, kill_grace=GRACE)
        pid_file = self.path("pid")
        started = time.monotonic()
        d = runner.run(["bash", "-c", 'sleep 1000 & echo $! > "$1"; wait', "test", pid_file],
                       name="create-snapshot")
        [sleeper] = await pids_from(pid_file, 1)
        self.assertTrue(alive(sleeper))
        failure = await self.assertFailure(d, CommandTimedOut)
        self.assertFalse(alive(sleeper), "the backgrounded grandchild survived the timeout")
        self.assertTrue(failure.result.timed_out)
        self.assertEqual(str(failure), "create-snapshot timed out after 1 s and was killed "
                                       "with its process group")
        self.assertLess(time.monotonic() - started, 1 + GRACE + 1)

    @inline
    async def test_no_timeout_when_none(self):
        runner = ProcessRunner(reactor, default_timeout=0.2)
        result = await runner.run(["sleep", "0.6"], timeout=None)
        self.assertEqual(result.exit_code, 0)

    # -- the idle timeout: no output for N seconds -----------------------------------------

    @inline
    async def test_idle_timeout_kills_a_silent_group(self):
        pid_file = self.path("pid")
        started = time.monotonic()
        d = self.runner.run(["bash", "-c", 'echo started; sleep 1000 & echo $! > "$1"; wait', "test", pid_file],
                            name="SendSeedDataCommand", idle_timeout=0.5)
        [sleeper] = await pids_from(pid_file, 1)
        failure = await self.assertFailure(d, CommandTimedOut)
        self.assertFalse(alive(sleeper), "the backgrounded grandchild survived the idle timeout")
        result = failure.result
        self.assertEqual((result.timed_out, result.idle, result.stdout), (True, True, b"started\n"))
        self.assertEqual(str(failure), "SendSeedDataCommand printed nothing for 0.5 s and was killed "
                                       "with its process group")
        self.assertLess(time.monotonic() - started, 0.5 + GRACE + 1)

    @inline
    async def test_output_on_either_pipe_keeps_a_command_alive(self):
        # 3 s of work, three times the idle timeout, never silent for long: stdout, then stderr only
        script = ("for i in $(seq 15); do echo $i; sleep 0.1; done;"
                  "for i in $(seq 15); do echo $i >&2; sleep 0.1; done")
        result = await self.runner.run(["bash", "-c", script], idle_timeout=1)
        self.assertEqual((result.exit_code, result.timed_out), (0, False))

    @inline
    async def test_a_terminated_command_does_not_time_out_while_it_dies(self):
        pid_file = self.path("pids")
        command = self.runner.start(["bash", "-c", STUBBORN_TREE, "test", pid_file], idle_timeout=GRACE / 5)
        await pids_from(pid_file, 2)
        await command.terminate()  # TERM is ignored: the group dies only at SIGKILL, GRACE later
        failure = await self.assertFailure(command.result, CommandFailed)
        self.assertEqual((failure.result.timed_out, failure.result.signal), (False, signal.SIGKILL))

    @inline
    async def test_wall_clock_timeout_still_applies_while_output_flows(self):
        d = self.runner.run(["bash", "-c", "while :; do echo tick; sleep 0.05; done"], timeout=0.5, idle_timeout=5)
        failure = await self.assertFailure(d, CommandTimedOut)
        self.assertFalse(failure.result.idle)
        self.assertIn("timed out after 0.5 s", str(failure))

    @inline
    async def test_cancel_kills_group_even_when_it_ignores_sigterm(self):
        pid_file = self.path("pids")
        d = self.runner.run(["bash", "-c", STUBBORN_TREE, "test", pid_file])
        pids = await pids_from(pid_file, 2)
        d.cancel()
        await self.assertFailure(d, CancelledError)
        await self.runner.stop_all()  # waits for the group the cancel is killing
        self.assertEqual([pid for pid in pids if alive(pid)], [])

    @inline
    async def test_terminate_fires_once_the_whole_group_is_gone(self):
        pid_file = self.path("pids")
        command = self.runner.start(["bash", "-c", STUBBORN_TREE, "test", pid_file])
        pids = await pids_from(pid_file, 2)
        self.assertEqual(pids[0], command.pid)
        started = time.monotonic()
        await command.terminate()
        self.assertEqual([pid for pid in pids if alive(pid)], [])
        self.assertGreaterEqual(time.monotonic() - started, GRACE)  # TERM was not enough
        failure = await self.assertFailure(command.result, CommandFailed)
        self.assertEqual(failure.result.signal, signal.SIGKILL)
        await command.terminate()  # a second call just reports it is over

    @inline
    async def test_terminate_stops_reading_pipes_held_by_a_process_that_left_the_group(self):
        pid_file = self.path("pid")
        command = self.runner.start(
            ["bash", "-c", """setsid bash -c 'echo $$ > "$1"; exec sleep 1000' t "$1" &
                              exec sleep 1000""", "t", pid_file],
            check=False)
        [escaped] = await pids_from(pid_file, 1)
        self.addCleanup(os.kill, escaped, signal.SIGKILL)
        await command.terminate()
        self.assertEqual((await command.result).signal, signal.SIGTERM)
        self.assertTrue(alive(escaped))  # another session's process is not ours to kill

    @inline
    async def test_stop_all_terminates_every_running_command(self):
        # Started for real (a signal that lands between fork and exec can be lost, leaving
        # it to SIGKILL: fine for the runner, but this test wants to see SIGTERM work).
        ready = self.path("ready")
        first = self.runner.start(["bash", "-c", 'echo $$ >> "$1"; exec sleep 1000', "t", ready],
                                  name="sleep")
        second = self.runner.start(["bash", "-c", 'echo $$ >> "$1"; exec sleep 1000', "t", ready],
                                   check=False)
        await pids_from(ready, 2)
        await self.runner.stop_all()
        self.assertFalse(alive(first.pid) or alive(second.pid))
        failure = await self.assertFailure(first.result, CommandFailed)
        self.assertEqual(str(failure), f"sleep was killed by signal {int(signal.SIGTERM)}")
        self.assertEqual((await second.result).signal, signal.SIGTERM)

    @inline
    async def test_a_command_that_ended_leaves_its_daemons_alone(self):
        # A service start command leaves the server it launched in its group; once the
        # command has ended, terminate (and shutdown) must not touch that group.
        pid_file = self.path("pid")
        command = self.runner.start(
            ["bash", "-c", 'sleep 1000 >/dev/null 2>&1 & echo $! > "$1"', "test", pid_file])
        await command.result
        [daemon] = await pids_from(pid_file, 1)
        self.addCleanup(os.kill, daemon, signal.SIGKILL)
        await command.terminate()
        await self.runner.stop_all()
        self.assertTrue(alive(daemon))

    # -- arguments ---------------------------------------------------------------------------

    @inline
    async def test_configured_command_gets_arguments_literally(self):
        marker = self.path("MARKER")
        open(self.path("a-file-for-the-glob"), "w").close()
        args = ["with space", "it's", 'say "hi"', f"x; touch {marker}", f"$(touch {marker})",
                f"`touch {marker}`", "line\nbreak", "*", "", "-n", "$HOME", "a\\b"]
        result = await self.runner.run_configured("printf '%s\\0'", args, name="CustomCommands[x]",
                                                  cwd=self.dir)
        self.assertEqual(result.stdout.split(b"\0")[:-1], [arg.encode() for arg in args])
        self.assertFalse(os.path.exists(marker), "an argument was executed by a shell")
        self.assertEqual(result.name, "CustomCommands[x]")

    @inline
    async def test_configured_command_without_arguments_is_full_shell(self):
        result = await self.runner.run_configured("echo $((40 + 2)) | tr 4 X", name="X")
        self.assertEqual(result.stdout, b"X2\n")

    @inline
    async def test_configured_command_text_is_never_logged(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        logs.set_debug(True)
        self.addCleanup(logs.set_debug, False)
        await self.runner.run_configured("true --password=S3CRET", ["arg1"],
                                         name="MySQLServiceStartCommand")
        await self.runner.run(["true", "builtin-arg"])
        logged = repr(events)
        self.assertNotIn("S3CRET", logged)
        self.assertIn("MySQLServiceStartCommand", logged)
        self.assertIn("arg1", logged)
        self.assertIn("builtin-arg", logged)

    # -- output ------------------------------------------------------------------------------

    @inline
    async def test_stdout_is_bounded_and_memory_stays_flat(self):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        result = await self.runner.run(["head", "-c", "3G", "/dev/zero"], timeout=60)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        self.assertEqual(result.exit_code, 0)  # it was drained to the end, never blocked
        self.assertEqual(len(result.stdout), 1 << 20)
        self.assertTrue(result.stdout_truncated)
        self.assertLess(grown, 100 * 1024, f"ru_maxrss grew by {grown} KiB")

    @inline
    async def test_stdout_within_bound_is_not_truncated(self):
        runner = ProcessRunner(reactor, default_timeout=10, max_output=10)
        result = await runner.run(["printf", "0123456789"])
        self.assertEqual((result.stdout, result.stdout_truncated), (b"0123456789", False))
        result = await runner.run(["printf", "0123456789A"])
        self.assertEqual((result.stdout, result.stdout_truncated), (b"0123456789", True))

    @inline
    async def test_stderr_keeps_the_last_64k(self):
        result = await self.runner.run(
            ["bash", "-c", "head -c 300000 /dev/zero | tr '\\0' a >&2; printf END >&2"])
        self.assertEqual(len(result.stderr), 64 * 1024)
        self.assertTrue(result.stderr.endswith(b"aaaEND"))

    @inline
    async def test_stdout_and_stderr_are_separate(self):
        result = await self.runner.run(["bash", "-c", "echo out; echo err >&2; echo out2"])
        self.assertEqual((result.stdout, result.stderr), (b"out\nout2\n", b"err\n"))
        self.assertEqual(result.text(), "out\nout2\n")

    # -- limits ------------------------------------------------------------------------------

    @inline
    async def test_cap_refuses_with_busy_and_keeps_a_reserve_for_essential_commands(self):
        runner = ProcessRunner(reactor, default_timeout=10, kill_grace=GRACE, max_running=2, reserve=1)
        self.addCleanup(runner.stop_all)
        sleepers = [runner.start(["sleep", "30"]) for _ in range(2)]
        for sleeper in sleepers:
            sleeper.result.addErrback(lambda failure: failure.trap(CommandFailed))  # killed below
        with self.assertRaises(Busy) as caught:
            runner.start(["sleep", "30"], name="CustomCommands[nap]")
        self.assertEqual(caught.exception.retry_after, 5)
        self.assertIn("CustomCommands[nap] not started", str(caught.exception))
        await self.assertFailure(runner.run_configured("true", name="CustomCommands[x]"), Busy)
        self.assertEqual((await runner.run(["echo", "poll"], essential=True)).stdout, b"poll\n")
        runner.start(["sleep", "30"], essential=True).result.addErrback(lambda failure: failure.trap(CommandFailed))
        await self.assertFailure(runner.run(["true"], essential=True), Busy)  # the reserve is full too
        await sleepers[0].terminate()  # 2 running: the ordinary cap counts essential ones too
        await self.assertFailure(runner.run(["true"]), Busy)
        await sleepers[1].terminate()
        self.assertEqual((await runner.run(["true"])).exit_code, 0)

    @inline
    async def test_failure_message_redacts_the_runners_secrets_and_passwords(self):
        runner = ProcessRunner(reactor, default_timeout=10, secrets=("Seed-Secret-1", ""))
        script = 'echo "peer refused Seed-Secret-1; mysql -pHunter2 --password=Hunter3" >&2; exit 1'
        failure = await self.assertFailure(runner.run_configured(script, name="SendSeedDataCommand"),
                                           CommandFailed)
        self.assertEqual(str(failure), "SendSeedDataCommand failed with exit status 1: peer refused "
                                       "<redacted>; mysql -p<redacted> --password=<redacted>")

    # -- failures ----------------------------------------------------------------------------

    @inline
    async def test_failure_message_has_exit_status_and_stderr_tail(self):
        script = "for i in $(seq 1 200); do echo noise line $i >&2; done; echo 'Access denied' >&2; exit 3"
        failure = await self.assertFailure(
            self.runner.run_configured(script, name="MySQLServiceStartCommand"), CommandFailed)
        message = str(failure)
        self.assertTrue(message.startswith("MySQLServiceStartCommand failed with exit status 3: "))
        self.assertTrue(message.endswith("noise line 200\nAccess denied"), message)
        self.assertLess(len(message), 600)
        self.assertNotIn("noise line 1\n", message)
        self.assertEqual(failure.result.exit_code, 3)

    @inline
    async def test_failure_without_stderr_says_so(self):
        failure = await self.assertFailure(self.runner.run(["false"]), CommandFailed)
        self.assertEqual(str(failure), "false failed with exit status 1 and wrote nothing to stderr")

    @inline
    async def test_death_by_signal_fails(self):
        failure = await self.assertFailure(self.runner.run(["bash", "-c", "kill -9 $$"], name="lvs"),
                                           CommandFailed)
        self.assertEqual(str(failure), "lvs was killed by signal 9")
        self.assertEqual((failure.result.exit_code, failure.result.signal), (None, 9))

    @inline
    async def test_check_false_returns_any_exit_status(self):
        result = await self.runner.run(["bash", "-c", "echo partial; exit 5"], check=False)
        self.assertEqual((result.exit_code, result.ok, result.stdout), (5, False, b"partial\n"))

    @inline
    async def test_missing_program_fails_with_a_message(self):
        failure = await self.assertFailure(self.runner.run(["no-such-tool-orchagent"]), CommandFailed)
        self.assertEqual(failure.result.exit_code, 127)
        self.assertIn("no-such-tool-orchagent", str(failure))

    @inline
    async def test_missing_stdin_file_fails_before_spawning(self):
        failure = await self.assertFailure(
            self.runner.run(["cat"], stdin_path=self.path("absent")), AgentError)
        self.assertIn("absent", str(failure))

    # -- stdin, stdout file, environment, sudo -----------------------------------------------

    @inline
    async def test_stdin_is_dev_null_by_default(self):
        result = await self.runner.run(["readlink", "/proc/self/fd/0"])
        self.assertEqual(result.stdout, b"/dev/null\n")

    @inline
    async def test_stdin_path_and_stdout_path(self):
        source, target = self.path("in"), self.path("out")
        with open(source, "wb") as f:
            f.write(b"line one\n\0binary\n" * 1000)
        result = await self.runner.run(["cat"], stdin_path=source)
        self.assertEqual(result.stdout, b"line one\n\0binary\n" * 1000)
        result = await self.runner.run(["cat"], stdin_path=source, stdout_path=target)
        self.assertEqual(result.stdout, b"")
        with open(target, "rb") as f:
            self.assertEqual(f.read(), b"line one\n\0binary\n" * 1000)

    # -- streaming: the caller's pipe ends as stdin/stdout -------------------------------------

    @inline
    async def test_stdout_fd_streams_to_a_reading_thread_with_backpressure(self):
        read_end, write_end = os.pipe()
        self.addCleanup(os.close, read_end)
        command = self.runner.start(["head", "-c", str(32 * 1024 * 1024), "/dev/zero"], stdout_fd=write_end)
        # the runner closed its copy of the write end: only the child holds it
        self.assertRaises(OSError, os.fstat, write_end)
        await deferLater(reactor, 0.3, lambda: None)
        self.assertIsNone(command.protocol.stdout() or None)  # nothing captured: it is all in our pipe
        self.assertFalse(command.result.called, "the child must wait for the reader (pipe backpressure)")
        received = await threads.deferToThread(_drain, read_end)
        result = await command.result
        self.assertEqual((received, result.stdout), (32 * 1024 * 1024, b""))

    @inline
    async def test_stdin_fd_is_fed_by_a_writing_thread(self):
        read_end, write_end = os.pipe()
        out_read, out_write = os.pipe()
        self.addCleanup(os.close, out_read)
        command = self.runner.start(["sha256sum"], stdin_fd=read_end, stdout_fd=out_write)

        def feed() -> None:
            with os.fdopen(write_end, "wb") as f:
                for _ in range(64):
                    f.write(b"x" * 65536)

        await threads.deferToThread(feed)
        digest = await threads.deferToThread(lambda: os.read(out_read, 200))
        await command.result
        self.assertEqual(digest.split()[0], hashlib.sha256(b"x" * 65536 * 64).hexdigest().encode())

    @inline
    async def test_terminate_kills_a_streaming_group_and_the_reader_sees_the_end(self):
        read_end, write_end = os.pipe()
        self.addCleanup(os.close, read_end)
        command = self.runner.start(["bash", "-c", "trap '' TERM; cat /dev/zero & wait"], stdout_fd=write_end)
        draining = threads.deferToThread(_drain, read_end)
        await deferLater(reactor, 0.2, lambda: None)
        await command.terminate()
        self.assertGreater(await draining, 0)  # EOF once the whole group is gone
        await self.assertFailure(command.result, CommandFailed)

    @inline
    async def test_idle_timeout_counts_stderr_only_when_stdout_is_streamed(self):
        read_end, write_end = os.pipe()
        self.addCleanup(os.close, read_end)
        command = self.runner.start(["cat", "/dev/zero"], stdout_fd=write_end, idle_timeout=0.5)
        draining = threads.deferToThread(_drain, read_end)
        failure = await self.assertFailure(command.result, CommandTimedOut)
        self.assertTrue(failure.result.idle)
        self.assertGreater(await draining, 0)

    def test_descriptors_are_closed_when_the_spawn_fails(self):
        read_end, write_end = os.pipe()
        self.addCleanup(os.close, read_end)
        self.assertRaises(ValueError, self.runner.start, ["cat"], stdout_fd=write_end, stdout_path=self.path("x"))
        self.assertRaises(OSError, os.fstat, write_end)
        self.assertEqual(os.read(read_end, 1), b"")  # no writer left

    @inline
    async def test_parsed_sets_lc_all_c(self):
        runner = ProcessRunner(reactor, default_timeout=10,
                               environ={"PATH": "/usr/bin:/bin", "LC_ALL": "fr_FR.UTF-8"})
        show = ["bash", "-c", 'echo "$LC_ALL"']
        self.assertEqual((await runner.run(show, parsed=True)).stdout, b"C\n")
        self.assertEqual((await runner.run(show)).stdout, b"fr_FR.UTF-8\n")

    @inline
    async def test_path_is_extended_and_env_added(self):
        runner = ProcessRunner(reactor, default_timeout=10, environ={"PATH": "/usr/bin:/opt/x"})
        result = await runner.run(["bash", "-c", 'echo "$PATH $EXTRA"'], env={"EXTRA": "yes"})
        self.assertEqual(result.stdout, b"/usr/bin:/opt/x:/usr/sbin:/sbin:/bin yes\n")
        runner = ProcessRunner(reactor, default_timeout=10, environ={})
        result = await runner.run(["bash", "-c", 'echo "$PATH"'])
        self.assertEqual(result.stdout, b"/usr/sbin:/usr/bin:/sbin:/bin\n")

    @inline
    async def test_privileged_commands_go_through_sudo_n(self):
        bin_dir, record = self.path("bin"), self.path("sudo-argv")
        os.makedirs(bin_dir)
        with open(os.path.join(bin_dir, "sudo"), "w") as f:
            f.write(f'#!/bin/sh\nprintf "%s\\n" "$@" >> {record}\nshift\nexec "$@"\n')
        os.chmod(os.path.join(bin_dir, "sudo"), 0o755)
        environ = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
        sudoing = ProcessRunner(reactor, default_timeout=10, exec_with_sudo=True, environ=environ)
        result = await sudoing.run(["echo", "as root"], privileged=True)
        self.assertEqual(result.stdout, b"as root\n")
        with open(record) as f:
            self.assertEqual(f.read(), "-n\necho\nas root\n")
        await sudoing.run(["true"])  # not privileged: no sudo
        plain = ProcessRunner(reactor, default_timeout=10, environ=environ)
        await plain.run(["true"], privileged=True)  # ExecWithSudo off: no sudo
        with open(record) as f:
            self.assertEqual(f.read(), "-n\necho\nas root\n")
