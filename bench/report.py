"""How the benchmarks report: percentiles and milliseconds, Markdown tables, ratios, the machine
line, and their sections in bench/RESULTS.md (written only when a run is given ``--record``)."""

from __future__ import annotations

import argparse
import os
import re
import sys

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")


def add_record_option(parser: argparse.ArgumentParser) -> None:
    """``--record``: the one way a benchmark writes its section into RESULTS.md."""
    parser.add_argument("--record", action="store_true", help="write the figures into bench/RESULTS.md")


def command(benchmark: str) -> str:
    """The command line that ran this benchmark, as a reader would type it."""
    return f"./run-bench {benchmark}" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, round(fraction * len(sorted_values) + 0.5))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}" if seconds < 10 else f"{seconds * 1000:.0f}"


def p50_p99(sorted_values: list[float]) -> str:
    return f"{ms(percentile(sorted_values, 0.5))} / {ms(percentile(sorted_values, 0.99))}"


def ratio(baseline_seconds: float, seconds: float) -> str:
    """How many times faster than the baseline (throughput ratio of two durations of the same work)."""
    return f"{baseline_seconds / seconds:.2f}x"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(row) + " |" for row in rows)]


def machine_line(facts: dict) -> str:
    """The "Machine:" line of a section, from `bench.machine.machine`."""
    return (f"* Machine: {facts['nproc']} CPUs ({facts['cpu']}), {facts['memory']} RAM, Linux {facts['kernel']}, "
            f"load average {facts['load']} at the start; data on {facts['filesystem']}; Python {facts['python']}.")


def record(lines: list[str], heading: str, path: str = RESULTS) -> None:
    """Put a section into RESULTS.md: replace it if an earlier run wrote it, append it otherwise."""
    section = "\n".join(lines).rstrip("\n") + "\n"
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    start = text.find(heading)
    if start < 0:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + section
    else:
        following = re.search(r"^## ", text[start + len(heading):], re.M)
        end = start + len(heading) + following.start() if following else len(text)
        text = text[:start] + section + ("\n" + text[end:] if following else "")
    with open(path, "w") as f:
        f.write(text)
    print(f"recorded in {os.path.relpath(path)}", flush=True)
