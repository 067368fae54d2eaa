"""Is a MySQL server using the datadir?  Decided so that not knowing counts as "running".

Emptying or overwriting the datadir of a running server destroys it, so every guard asks
:func:`decide`, which weighs two sources:

* ``MySQLServiceStatusCommand`` (:func:`command_verdict`): exit 0 is "running"; another exit is
  "stopped"; a timeout, a command that cannot run (126/127) or a service manager that cannot be
  reached (``systemctl`` without systemd) is "unknown".
* The host itself (:func:`probe`, blocking: run it in a thread): the server's pid file naming a
  live server, any process whose working directory is the datadir or that has the InnoDB/Aria
  files open, a lock on them in ``/proc/locks``, the unix socket or the port accepting
  connections.  A check that cannot be made (permission denied, a connect that neither succeeds
  nor is refused) is noted, never read as "nothing there".

The rule: the command saying "running" or any evidence from the probe means running.  Otherwise
the command saying "stopped" means stopped.  Without a command, the probe alone means stopped
only when every one of its checks could be made; everything else is unknown, which the guards
treat as running.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import stat
from typing import Iterable

import attrs

RUNNING, STOPPED, UNKNOWN = "running", "stopped", "unknown"

#: Executable names of the servers: a live process by one of these names owns its pid file.
SERVER_NAMES = frozenset(("mysqld", "mariadbd", "mysqld-debug", "mariadbd-debug"))

#: Files a server keeps open (and locked) while it runs, matched on their names in the datadir.
_SERVER_FILE = re.compile(r"ibdata[0-9]*|ib_logfile[0-9]+|ibtmp[0-9]*|undo[0-9]+|aria_log_control"
                          r"|aria_log\.[0-9]+|.+\.ibd")
_LOCKED_FILES = ("ibdata1", "aria_log_control")  # InnoDB and Aria lock these for the server's lifetime
_OPEN_PID_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_GONE = (errno.ENOENT, errno.ESRCH)  # the process ended while we looked
CONNECT_TIMEOUT = 0.5  # seconds; loopback answers at once, a full backlog may not


@attrs.frozen
class ServerPlaces:
    """Where a server using the datadir would show itself."""

    datadir: str
    pid_file: str
    socket: str
    port: int
    addresses: tuple[str, ...] = ("127.0.0.1",)


@attrs.frozen
class Findings:
    """What :func:`probe` saw: evidence of a server, and the checks it could not make."""

    found: tuple[str, ...] = ()
    unchecked: tuple[str, ...] = ()


@attrs.frozen
class Liveness:
    """The answer: ``state`` is RUNNING, STOPPED or UNKNOWN; ``evidence`` says why, for messages."""

    state: str
    evidence: tuple[str, ...]

    @property
    def may_be_running(self) -> bool:
        return self.state != STOPPED

    def explain(self) -> str:
        return "; ".join(self.evidence)


@attrs.frozen
class Verdict:
    """What ``MySQLServiceStatusCommand`` said: a state and a sentence."""

    state: str
    text: str


# --- the configured command ---------------------------------------------------------------------

#: stderr of a service manager that cannot tell (systemctl without systemd, no D-Bus, no init script).
_CANNOT_TELL = re.compile(r"not been booted with systemd|failed to connect to bus|"
                          r"failed to get d-bus connection|can't operate|unrecognized service", re.I)


def command_verdict(result) -> Verdict:
    """Classify one run of ``MySQLServiceStatusCommand`` (a :class:`orchagent.commands.CommandResult`)."""
    key, exit_code, stderr = "MySQLServiceStatusCommand", result.exit_code, result.stderr
    if result.timed_out:
        limit = f" after {result.timeout:g} s" if result.timeout else ""
        return Verdict(UNKNOWN, f"{key} timed out{limit}")
    if exit_code == 0:
        return Verdict(RUNNING, f"{key} exited 0")
    if exit_code is None:
        return Verdict(UNKNOWN, f"{key} was killed by signal {result.signal}")
    if exit_code in (126, 127):
        return Verdict(UNKNOWN, f"{key} could not be run (exit status {exit_code}: {_first_line(stderr)})")
    if _CANNOT_TELL.search(stderr.decode("utf-8", "replace")):
        return Verdict(UNKNOWN, f"{key} cannot reach its service manager ({_first_line(stderr)})")
    return Verdict(STOPPED, f"{key} exited {exit_code}")


def _first_line(stderr: bytes) -> str:
    text = stderr.decode("utf-8", "replace").strip()
    return text.splitlines()[0][:200] if text else "nothing on stderr"


# --- the rule ----------------------------------------------------------------------------------


def decide(verdict: Verdict | None, findings: Findings) -> Liveness:
    """Combine the command's verdict (None: not configured) with the probe's findings."""
    if verdict is not None and verdict.state == RUNNING:
        return Liveness(RUNNING, (verdict.text,))
    if findings.found:
        if verdict is None:
            return Liveness(RUNNING, findings.found)
        first, *more = findings.found
        return Liveness(RUNNING, (f"{verdict.text}, but {first}", *more))
    if verdict is not None:
        return Liveness(verdict.state, (verdict.text,))
    if findings.unchecked:
        return Liveness(UNKNOWN, ("MySQLServiceStatusCommand is not set",) + findings.unchecked)
    return Liveness(STOPPED, ("MySQLServiceStatusCommand is not set and no server uses the datadir "
                              "(pid file, processes, locks, socket and port checked)",))


# --- the probe ---------------------------------------------------------------------------------


def probe(places: ServerPlaces, *, proc: str = "/proc", own_pid: int | None = None,
          connect_timeout: float = CONNECT_TIMEOUT) -> Findings:
    """Look for a server using ``places.datadir``.  Blocking: reads /proc and connects."""
    own_pid = os.getpid() if own_pid is None else own_pid
    datadir = os.path.realpath(places.datadir)
    found: list[str] = []
    unchecked: list[str] = []
    _check_pid_file(places.pid_file, datadir, proc, found, unchecked)
    _check_processes(datadir, proc, own_pid, found, unchecked)
    _check_locks(datadir, proc, found, unchecked)
    if not found:  # connecting is the last resort: a server counts refused handshakes
        _check_connect(socket.AF_UNIX, places.socket, f"the socket {places.socket}",
                       connect_timeout, found, unchecked)
        for address in places.addresses:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            _check_connect(family, (address, places.port), f"port {places.port} on {address}",
                           connect_timeout, found, unchecked)
    return Findings(tuple(found), tuple(unchecked))


def _check_pid_file(pid_file: str, datadir: str, proc: str, found: list, unchecked: list) -> None:
    try:
        # The mysql user may put a FIFO or a symlink there: neither may hang or redirect us.
        fd = os.open(pid_file, _OPEN_PID_FILE)
    except FileNotFoundError:
        return
    except OSError as e:
        unchecked.append(f"cannot read the pid file {pid_file}: {e.strerror}")
        return
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            unchecked.append(f"the pid file {pid_file} is not a regular file")
            return
        text = os.read(fd, 64).strip()
    finally:
        os.close(fd)
    if not text.isdigit():
        return  # not a pid: nothing can be running under it
    pid = int(text)
    try:
        what = _server_process(proc, pid, datadir)
    except OSError as e:
        if e.errno in _GONE:
            return  # a stale pid file
        unchecked.append(f"cannot inspect pid {pid} named by the pid file {pid_file}: {e.strerror}")
        return
    if what:
        found.append(f"the pid file {pid_file} names pid {pid}, {what}")


def _server_process(proc: str, pid: int, datadir: str) -> str:
    """How the live process ``pid`` looks like a server of ``datadir``; "" when it does not."""
    base = f"{proc}/{pid}"
    with open(f"{base}/cmdline", "rb") as f:
        argv0 = f.read(4096).split(b"\0")[0].decode("utf-8", "replace")
    if not argv0:
        return ""  # a zombie or a kernel thread
    if os.path.basename(argv0) in SERVER_NAMES:  # readable by anyone, unlike exe and cwd
        return f"a running {os.path.basename(argv0)} ({argv0})"
    exe = _link(f"{base}/exe")
    if os.path.basename(exe) in SERVER_NAMES:
        return f"a running {os.path.basename(exe)} ({exe})"
    if _link(f"{base}/cwd") == datadir:
        return f"({exe}) working in the datadir"
    return ""


def _link(path: str) -> str:
    """readlink, with " (deleted)" dropped; ENOENT/ESRCH/EACCES raise as OSError."""
    target = os.readlink(path)
    return target[:-len(" (deleted)")] if target.endswith(" (deleted)") else target


def _check_processes(datadir: str, proc: str, own_pid: int, found: list, unchecked: list) -> None:
    try:
        pids = [int(entry) for entry in os.listdir(proc) if entry.isdigit()]
    except OSError as e:
        unchecked.append(f"cannot list the processes in {proc}: {e.strerror}")
        return
    if 1 not in pids:
        unchecked.append(f"cannot see every process in {proc} (mounted with hidepid?)")
    inside = datadir.rstrip("/") + "/"
    denied: list[tuple[int, str]] = []
    for pid in pids:
        if pid == own_pid:
            continue
        base = f"{proc}/{pid}"
        try:
            if _link(f"{base}/cwd") == datadir:
                found.append(f"pid {pid} ({_exe(base)}) has its working directory in the datadir {datadir}")
                continue
            for fd in os.listdir(f"{base}/fd"):
                try:
                    target = _link(f"{base}/fd/{fd}")
                except OSError as e:
                    if e.errno in _GONE:
                        continue
                    raise
                if target.startswith(inside) and _SERVER_FILE.fullmatch(os.path.basename(target)):
                    found.append(f"pid {pid} ({_exe(base)}) has {target} open")
                    break
        except OSError as e:
            if e.errno not in _GONE:
                denied.append((pid, e.strerror))
    if denied:
        pid, reason = denied[0]
        unchecked.append(f"cannot read the working directory or open files of {len(denied)} "
                         f"process(es) in {proc} (pid {pid}: {reason})")


def _exe(base: str) -> str:
    try:
        return _link(f"{base}/exe")
    except OSError:
        return "?"


def _check_locks(datadir: str, proc: str, found: list, unchecked: list) -> None:
    inodes = {}
    for name in _LOCKED_FILES:
        try:
            inodes[os.stat(os.path.join(datadir, name), follow_symlinks=False).st_ino] = name
        except OSError:
            continue
    if not inodes:
        return
    try:
        with open(f"{proc}/locks", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError as e:
        unchecked.append(f"cannot read {proc}/locks: {e.strerror}")
        return
    for pid, inode in locks_by_inode(text.splitlines()):
        if inode in inodes:
            who = f"pid {pid}" if pid > 0 else "a process the agent cannot see"
            found.append(f"{who} holds a lock on {os.path.join(datadir, inodes[inode])}")


def locks_by_inode(lines: Iterable[str]) -> list[tuple[int, int]]:
    """(pid, inode) of each granted lock in /proc/locks (waiters, "->", left out)."""
    held = []
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or "->" in fields:
            continue
        try:
            pid = int(fields[4])
            inode = int(fields[5].rsplit(":", 1)[1])
        except (ValueError, IndexError):
            continue
        held.append((pid, inode))
    return held


def _check_connect(family, address, what: str, timeout: float, found: list, unchecked: list) -> None:
    if family == socket.AF_UNIX and not address:
        return
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(address)
        except (ConnectionRefusedError, FileNotFoundError):
            return  # nothing listens there
        except OSError as e:
            unchecked.append(f"cannot tell whether {what} accepts connections: {e.strerror or e}")
            return
    found.append(f"{what} accepts connections")
