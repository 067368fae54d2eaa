"""A sysbench load on a server for the whole of a benchmark, and its transactions per second in any
window of time (what a seed method costs the server it copies)."""

from __future__ import annotations

import re
import subprocess
import threading
import time

#: sysbench 1.0's ``--report-interval`` line: ``[ 12s ] thds: 2 tps: 2012.03 qps: ...``
_REPORT = re.compile(r"^\[\s*\d+(?:\.\d+)?s\s*\]\s+thds:\s*\d+\s+tps:\s*(\d+(?:\.\d+)?)\s")


def parse_tps(line: str) -> float | None:
    """The tps of one interval report line; None for any other line."""
    match = _REPORT.match(line)
    return float(match.group(1)) if match else None


def mean_tps(samples: list[tuple[float, float]], start: float, end: float, interval: float = 1.0) -> float:
    """The mean tps over ``[start, end]`` from ``(time the report came, tps)`` samples, each the rate of the
    ``interval`` before its time, weighted by how much of that interval lies in the window; NaN if none does."""
    weighted = weights = 0.0
    for came, tps in samples:
        overlap = min(came, end) - max(came - interval, start)
        if overlap > 0:
            weighted += tps * overlap
            weights += overlap
    return weighted / weights if weights else float("nan")


class SysbenchLoad:
    """``sysbench <test> run`` against the server at ``socket`` until :meth:`stop`, reporting every
    second; :meth:`tps` is its rate in a window of ``time.monotonic()``.  ``rate``: transactions per
    second to aim at (0: as many as it can)."""

    def __init__(self, socket: str, *, tables: int, rows: int, test: str = "oltp_write_only", threads: int = 2,
                 rate: int = 0):
        self.samples: list[tuple[float, float]] = []
        self.process = subprocess.Popen(
            ["sysbench", test, "--db-driver=mysql", f"--mysql-socket={socket}", "--mysql-user=root",
             f"--tables={tables}", f"--table-size={rows}", f"--threads={threads}", f"--rate={rate}", "--time=0",
             "--report-interval=1", "run"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.output: list[str] = []  # what was not a report line (the error, if it fails)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            tps = parse_tps(line)
            if tps is None:
                self.output.append(line)
            else:
                self.samples.append((time.monotonic(), tps))

    def tps(self, start: float, end: float) -> float:
        if self.process.poll() is not None:
            raise RuntimeError(f"the sysbench load ended (exit {self.process.returncode}): {''.join(self.output[-5:])}")
        return mean_tps(self.samples, start, end)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait()
        self._reader.join()
