"""Facts about the machine and the processes a benchmark measures (CPU, memory, load), from /proc."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
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
