"""orchagent.host.liveness: the decision rule, the status command's verdict, and the probe over a fake /proc."""

import os

from twisted.trial.unittest import SynchronousTestCase

from orchagent.host.liveness import (
    RUNNING, STOPPED, UNKNOWN, Findings, ServerPlaces, Verdict, command_verdict, decide, locks_by_inode, probe)
from tests.support.fake_runner import command_result

OWN_PID = 999


def result(exit_code, stderr=b"", timed_out=False, signal=None):
    return command_result("MySQLServiceStatusCommand", ("bash",), exit_code=exit_code, signal=signal, stderr=stderr,
                          timed_out=timed_out, timeout=2.0)


class VerdictTests(SynchronousTestCase):
    """Only exit 0 and a plain non-zero exit are answers; everything else is unknown."""

    def test_verdicts(self):
        cases = [
            (result(0), RUNNING, "exited 0"),
            (result(3), STOPPED, "exited 3"),
            (result(1), STOPPED, "exited 1"),
            (result(None, timed_out=True), UNKNOWN, "timed out after 2 s"),
            (result(None, signal=9), UNKNOWN, "killed by signal 9"),
            (result(127, b"bash: line 1: systemctl: command not found\n"), UNKNOWN, "command not found"),
            (result(126, b"Permission denied"), UNKNOWN, "could not be run (exit status 126"),
            (result(1, b"System has not been booted with systemd as init system (PID 1). Can't operate.\n"
                       b"Failed to connect to bus: Host is down\n"), UNKNOWN, "cannot reach its service manager"),
            (result(1, b"Failed to connect to bus: No such file or directory"), UNKNOWN, "service manager"),
        ]
        for run, state, text in cases:
            verdict = command_verdict(run)
            self.assertEqual(verdict.state, state, run)
            self.assertIn(text, verdict.text)


class DecideTests(SynchronousTestCase):
    """The rule: running on any evidence; stopped only when the command says so or the probe saw everything."""

    FOUND = Findings(found=("port 3306 on 127.0.0.1 accepts connections",))
    BLIND = Findings(unchecked=("cannot read /proc/locks",))

    def test_rule(self):
        running, stopped, unknown = Verdict(RUNNING, "r"), Verdict(STOPPED, "s"), Verdict(UNKNOWN, "u")
        cases = [
            (running, Findings(), RUNNING), (running, self.BLIND, RUNNING),
            (stopped, Findings(), STOPPED), (stopped, self.BLIND, STOPPED), (stopped, self.FOUND, RUNNING),
            (unknown, Findings(), UNKNOWN), (unknown, self.BLIND, UNKNOWN), (unknown, self.FOUND, RUNNING),
            (None, Findings(), STOPPED), (None, self.BLIND, UNKNOWN), (None, self.FOUND, RUNNING),
        ]
        for verdict, findings, state in cases:
            answer = decide(verdict, findings)
            self.assertEqual(answer.state, state, (verdict, findings))
            self.assertEqual(answer.may_be_running, state != STOPPED)

    def test_evidence_names_what_was_found(self):
        answer = decide(Verdict(STOPPED, "MySQLServiceStatusCommand exited 1"), self.FOUND)
        self.assertEqual(answer.explain(), "MySQLServiceStatusCommand exited 1, but port 3306 on 127.0.0.1 "
                                           "accepts connections")
        self.assertIn("MySQLServiceStatusCommand is not set; cannot read /proc/locks",
                      decide(None, self.BLIND).explain())


class LocksTests(SynchronousTestCase):
    """/proc/locks lines become (pid, inode); waiters are left out."""

    def test_parse(self):
        text = ["1: POSIX  ADVISORY  WRITE 1234 fd:01:5038 0 EOF",
                "1: -> POSIX  ADVISORY  WRITE 77 fd:01:5038 0 EOF",
                "2: OFDLCK ADVISORY  READ  -1 00:2b:12 0 EOF",
                "3: FLOCK  ADVISORY  WRITE 88 00:19:4242 0 EOF", "garbage"]
        self.assertEqual(locks_by_inode(text), [(1234, 5038), (-1, 12), (88, 4242)])


class ProbeTests(SynchronousTestCase):
    """The probe on a fake /proc: what counts as a server using the datadir, and what does not."""

    def setUp(self):
        self.root = os.path.realpath(self.mktemp())
        self.datadir = os.path.join(self.root, "data")
        os.makedirs(os.path.join(self.datadir, "db"))
        for name in ("ibdata1", "aria_log_control", "db/t.ibd", "db/t.frm"):
            open(os.path.join(self.datadir, name), "w").close()
        self.proc = os.path.join(self.root, "proc")
        self.pid_file = os.path.join(self.root, "mysqld.pid")
        self.process(1, "/sbin/init", cwd="/")
        self.process(OWN_PID, "/usr/bin/python3", cwd=self.datadir, fds=[self.datadir + "/ibdata1"])
        self.locks("")

    def process(self, pid, exe, *, argv0=None, cwd="/", fds=()):
        base = os.path.join(self.proc, str(pid))
        os.makedirs(os.path.join(base, "fd"))
        with open(os.path.join(base, "cmdline"), "wb") as f:
            f.write((argv0 or exe).encode() + b"\0--some-option\0")
        os.symlink(exe, os.path.join(base, "exe"))
        os.symlink(cwd, os.path.join(base, "cwd"))
        for number, target in enumerate(fds, 3):
            os.symlink(target, os.path.join(base, "fd", str(number)))

    def locks(self, text):
        with open(os.path.join(self.proc, "locks"), "w") as f:
            f.write(text)

    def look(self, pid_file=None):
        places = ServerPlaces(datadir=self.datadir, pid_file=pid_file or self.pid_file, socket="", port=3306,
                              addresses=())
        return probe(places, proc=self.proc, own_pid=OWN_PID)

    def write_pid_file(self, pid):
        with open(self.pid_file, "w") as f:
            f.write(f"{pid}\n")

    def test_nothing_there_is_a_complete_look(self):
        self.assertEqual(self.look(), Findings())  # the agent's own open files do not count

    def test_pid_file_naming_a_live_server(self):
        self.process(42, "/usr/sbin/mariadbd", cwd="/elsewhere")
        self.write_pid_file(42)
        found = self.look().found
        self.assertEqual(found, (f"the pid file {self.pid_file} names pid 42, a running mariadbd "
                                 f"(/usr/sbin/mariadbd)",))

    def test_pid_file_naming_a_renamed_server(self):
        self.process(43, "/usr/bin/sleep", argv0="mysqld")
        self.write_pid_file(43)
        self.assertIn("names pid 43, a running mysqld", self.look().found[0])

    def test_pid_file_naming_a_process_working_in_the_datadir(self):
        self.process(45, "/opt/mysql/bin/server", cwd=self.datadir)
        self.write_pid_file(45)
        self.assertIn("names pid 45, (/opt/mysql/bin/server) working in the datadir", self.look().found[0])

    def test_stale_pid_files_find_nothing(self):
        self.write_pid_file(4242)  # no such process
        self.assertEqual(self.look(), Findings())
        self.process(44, "/usr/bin/sleep")  # the pid was reused by something else
        self.write_pid_file(44)
        self.assertEqual(self.look(), Findings())
        with open(self.pid_file, "w") as f:
            f.write("not a pid")
        self.assertEqual(self.look(), Findings())

    def test_pid_file_that_is_no_file_is_noted_not_followed(self):
        os.mkfifo(self.pid_file)  # opening it for reading would block
        self.assertEqual(self.look().unchecked, (f"the pid file {self.pid_file} is not a regular file",))
        os.unlink(self.pid_file)
        os.symlink("/proc/self/stat", self.pid_file)
        self.assertIn("cannot read the pid file", self.look().unchecked[0])

    def test_a_process_with_server_files_open(self):
        self.process(50, "/usr/bin/cat", fds=["/dev/null", self.datadir + "/db/t.frm", "/other/ibdata1"])
        self.assertEqual(self.look(), Findings())
        self.process(51, "/usr/bin/cat", fds=["/dev/null", self.datadir + "/db/t.ibd (deleted)"])
        self.assertEqual(self.look().found, (f"pid 51 (/usr/bin/cat) has {self.datadir}/db/t.ibd open",))

    def test_a_process_working_in_the_datadir(self):
        self.process(52, "/usr/sbin/mariadbd", cwd=self.datadir)
        self.assertEqual(self.look().found, (f"pid 52 (/usr/sbin/mariadbd) has its working directory in "
                                             f"the datadir {self.datadir}",))

    def test_a_lock_on_the_server_files(self):
        inode = os.stat(os.path.join(self.datadir, "aria_log_control")).st_ino
        self.locks(f"1: POSIX  ADVISORY  WRITE 0 fd:01:{inode} 0 EOF\n")
        self.assertEqual(self.look().found, (f"a process the agent cannot see holds a lock on "
                                             f"{self.datadir}/aria_log_control",))

    def test_checks_that_cannot_be_made_are_noted(self):
        os.rmdir(os.path.join(self.proc, "1", "fd"))
        open(os.path.join(self.proc, "1", "fd"), "w").close()  # listing it fails, as it would unprivileged
        os.unlink(os.path.join(self.proc, "locks"))
        unchecked = self.look().unchecked
        self.assertEqual(len(unchecked), 2, unchecked)
        self.assertIn("cannot read the working directory or open files of 1 process(es)", unchecked[0])
        self.assertIn("(pid 1: Not a directory)", unchecked[0])
        self.assertIn("cannot read", unchecked[1])
        self.assertIn("/locks", unchecked[1])

    def test_hidden_processes_are_noted(self):
        os.rename(os.path.join(self.proc, "1"), os.path.join(self.proc, "hidden"))
        self.assertIn("cannot see every process", self.look().unchecked[0])
