"""Facts about the machine and the processes a benchmark measures (CPU, memory, load), from /proc."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import threading
import time


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def load() -> str:
    """The 1, 5 and 15 minute load averages."""
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def machine(directory: str = ".") -> dict:
    """What a result depends on: CPUs, memory, the file system holding ``directory``, kernel, load, Python."""
    import twisted
    with open("/proc/meminfo") as f:
        memory_kib = int(re.search(r"MemTotal:\s+(\d+)", f.read()).group(1))
    df = subprocess.run(["df", "-PT", directory], capture_output=True, text=True).stdout.splitlines()[-1].split()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "memory": f"{memory_kib / (1 << 20):.1f} GiB",
        "filesystem": f"{df[1]} on {df[0]} ({os.path.abspath(directory)})",
        "kernel": platform.release(),
        "load": load(),
        "python": f"{platform.python_version()} ({sys.executable}), Twisted {twisted.__version__}",
    }


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, root), so each round's peak is its own."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5\n")
        return True
    except OSError:
        return False


def memory_kib(pid: int) -> dict[str, int]:
    """The process's resident memory now (VmRSS) and at its peak (VmHWM), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        text = f.read()
    return {key: int(re.search(rf"{key}:\s+(\d+) kB", text).group(1)) for key in ("VmRSS", "VmHWM")}


def rss_mb(pid: int) -> float:
    return round(memory_kib(pid)["VmRSS"] / 1024, 1)


def peak_rss_mb(pid: int) -> float:
    return round(memory_kib(pid)["VmHWM"] / 1024, 1)


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """utime + stime of the process itself, or with ``children`` of its reaped children (its commands)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    first = 13 if children else 11
    return (int(fields[first]) + int(fields[first + 1])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent on anything but idling since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def process_tree() -> dict[int, list[int]]:
    """Parent pid -> its children's pids, for every process now (from /proc/<pid>/stat)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # it ended meanwhile
            children.setdefault(parent, []).append(int(name))
    return children


def command_name(pid: int) -> str:
    """A process's program and its first option that is not an option file, e.g. "mariabackup --prepare"."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().decode("utf-8", "replace").split("\0")
    mode = next((arg for arg in argv[1:] if arg and not arg.startswith("--defaults") and "=" not in arg), "")
    return f"{os.path.basename(argv[0])} {mode}".strip()


class ToolWatch:
    """The commands running under ``roots`` (not the roots themselves, nor anything under ``skip``),
    sampled from /proc in a thread every ``interval`` s while entered: each one's peak RSS (VmHWM is
    the peak so far, so a sample shortly before a process ends sees nearly all of it) and when it
    was first and last seen (``time.monotonic()``).  A process shorter than the interval may be missed."""

    def __init__(self, roots: list[int], skip: tuple[int, ...] = (), interval: float = 0.1):
        self._roots, self._skip, self._interval = roots, set(skip), interval
        self._own_names = {command_name(pid) for pid in roots}
        self.peaks_mb: dict[str, float] = {}
        self.seen: dict[str, tuple[float, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "ToolWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self._interval):
                return

    def sample(self) -> None:
        tree = process_tree()
        now = time.monotonic()
        pending = [child for root in self._roots for child in tree.get(root, [])]
        while pending:
            pid = pending.pop()
            if pid in self._skip:
                continue
            pending.extend(tree.get(pid, []))
            try:
                name, peak = command_name(pid), peak_rss_mb(pid)
            except (OSError, AttributeError):
                continue  # it ended meanwhile (or is a zombie, without memory lines)
            if not name or name in self._own_names:
                continue  # exiting (its command line is gone), or a fork of a root not yet running its program
            self.peaks_mb[name] = max(peak, self.peaks_mb.get(name, 0.0))
            self.seen[name] = (self.seen.get(name, (now,))[0], now)
