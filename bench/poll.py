"""Host-facts benchmark (issue 3): orchestrator's 9-call status poll under load, and the error-log tail.

    ./run-bench poll                 # about 100 s, plus about a minute the first time, to build
                                     # the data
    ./run-bench poll --record        # also write the figures into bench/RESULTS.md
    ./run-bench poll --keep-data     # keep the built datadir and log for the next run

Why it matters (contract B.0.3): orchestrator marks an agent as checked only after all 9 GETs of
B.1.2 have answered, and looks for due agents every second, so a poll slower than 1 s is started
again (and again) while it runs.  This script starts a real agent (``twistd orchagent``) on
loopback against a datadir-like tree of 100k files and a 2 GiB MariaDB-like error log (both
built once under the temp directory and reused), checks that every poll route answers 200 with
the JSON type orchestrator decodes, and then measures:

* the poll with 1, 10 and 50 concurrent pollers (each sequential, keep-alive, ``?token=``,
  Go's headers), next to a "null poll" of 9 x ``/api/hostname`` under the same load, which is
  what the web layer alone costs: the difference is the price of the host facts;
* ``mysql-error-log-tail`` on the 2 GiB log, with the agent's VmRSS/VmHWM before and after, next
  to ``tail -n 20`` of the same file;
* ``du -sb`` of the tree, the walk ``mysql-du`` caches.

Pollers are threads with ``http.client`` (one keep-alive connection each, as Go's transport keeps
one per poller).  Here a request cost this client about 0.17 ms of CPU, against 0.43 ms for 10 treq
loops on one reactor (same agent, same machine), and the client shares the 2 cores with the agent:
the lighter client leaves more of them to the agent, which is what is measured.  The client's own
CPU use is printed with every result so this can be checked.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from testbed.agent import RunningAgent, start_agent  # noqa: E402

#: B.1.2, in orchestrator's order.
POLL_ROUTES = (
    "/api/available-snapshots-local",
    "/api/available-snapshots",
    "/api/lvs-snapshots",
    "/api/mount",
    "/api/mysql-status",
    "/api/mysql-port",
    "/api/mysql-du",
    "/api/mysql-datadir-available-space",
    "/api/mysql-error-log-tail",
)
NULL_ROUTES = ("/api/hostname",) * len(POLL_ROUTES)
#: What Go's http.Client sends (B.1.1).
HEADERS = {"User-Agent": "Go-http-client/1.1", "Accept-Encoding": "gzip"}
MOUNT_KEYS = ("Path", "Device", "LVPath", "FileSystem", "IsMounted", "DiskUsage", "MySQLDataPath", "MySQLDiskUsage")
SECTION_HEADING = "## Host facts: status poll and error-log tail (issue 3)"

SCHEMAS = 1000
TABLES_PER_SCHEMA = 50  # a .frm and an .ibd each: 100 files per schema directory
LARGE_FILES = {"ibdata1": 96 << 20, "ib_logfile0": 48 << 20, "aria_log.00000001": 8 << 20, "ib_buffer_pool": 1 << 20}
LOG_BLOCK_BYTES = 1 << 20
TAIL_LINES = 20


# --- the data ------------------------------------------------------------------------------


def build_once(path: str, build) -> tuple[float, bool]:
    """``build(path)`` unless an earlier run finished it; (seconds the build took, whether it was reused).

    ``<path>.built`` records the seconds and the size, so an interrupted or different build is redone.
    """
    marker = path + ".built"
    try:
        with open(marker) as f:
            seconds, size = f.read().split()
        if int(size) == disk_size(path):
            return float(seconds), True
    except (FileNotFoundError, ValueError):
        pass
    started = time.monotonic()
    build(path)
    seconds = time.monotonic() - started
    with open(marker, "w") as f:
        f.write(f"{seconds:.1f} {disk_size(path)}\n")
    return seconds, False


def disk_size(path: str) -> int:
    """A file's size, or the number of files in a directory tree (-1 if it does not exist)."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(len(files) for _, _, files in os.walk(path)) if os.path.isdir(path) else -1


def build_datadir(root: str) -> None:
    """A MariaDB-like datadir of 100k small files and a few large ones."""
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(os.path.join(root, "mysql"))
    rng = random.Random(3)
    noise = rng.randbytes(64 * 1024)
    for name in ("db.opt", "user.frm", "global_priv.frm"):
        with open(os.path.join(root, "mysql", name), "wb") as f:
            f.write(noise[:rng.randrange(64, 4096)])
    for name, size in LARGE_FILES.items():
        with open(os.path.join(root, name), "wb") as f:
            for offset in range(0, size, len(noise)):
                f.write(noise[:min(len(noise), size - offset)])
    for schema in range(SCHEMAS):
        directory = os.path.join(root, f"schema_{schema:04d}")
        os.mkdir(directory)
        for table in range(TABLES_PER_SCHEMA):
            for suffix, low, high in ((".frm", 600, 3000), (".ibd", 4096, 24576)):
                with open(os.path.join(directory, f"t{table:03d}{suffix}"), "wb") as f:
                    f.write(noise[:rng.randrange(low, high)])
    os.sync()


def log_block() -> bytes:
    """About 1 MiB of realistic MariaDB 10.11 error-log lines (whole lines)."""
    rng = random.Random(7)
    templates = (
        "{ts} {tid} [Warning] Aborted connection {tid} to db: 'shop' user: 'app' host: '10.0.{a}.{b}' "
        "(Got timeout reading communication packets)",
        "{ts} {tid} [Warning] Access denied for user 'monitor'@'10.0.{a}.{b}' (using password: YES)",
        "{ts} {tid} [Note] Start binlog_dump to slave_server({a}), pos(mysql-bin.{n:06d}, {pos}), "
        "using_gtid(1), gtid('0-1-{gtid}')",
        "{ts} {tid} [ERROR] Slave SQL: Could not execute Write_rows_v1 event on table shop.orders; Duplicate "
        "entry '{gtid}' for key 'PRIMARY', Error_code: 1062; handler error HA_ERR_FOUND_DUPP_KEY; the event's "
        "master log mysql-bin.{n:06d}, end_log_pos {pos}, Gtid 0-1-{gtid}, Internal MariaDB error code: 1062",
        "{ts} {tid} [Warning] Slave: Duplicate entry '{gtid}' for key 'PRIMARY' Error_code: 1062",
        "{ts} 0 [Note] InnoDB: Buffer pool(s) load completed at 240514 {h:2d}:{m:02d}:{s:02d}",
        "{ts} 0 [Note] InnoDB: Completed initialization of buffer pool",
        "{ts} 0 [Note] /usr/sbin/mariadbd: ready for connections.",
        "{ts} 0 [Note] Server socket created on IP: '0.0.0.0', port: '3306'.",
        "{ts} {tid} [Note] Detected table cache mutex contention at instance 1: 31% waits. Additional table "
        "cache instance activated. Number of instances after activation: 2.",
        "{ts} 0 [Warning] InnoDB: A long wait (151 seconds) was observed for dict_sys.latch",
    )
    lines, size = [], 0
    while True:
        h, m, s = rng.randrange(24), rng.randrange(60), rng.randrange(60)
        line = rng.choice(templates).format(
            ts=f"2024-05-14 {h:2d}:{m:02d}:{s:02d}", tid=rng.randrange(1, 99999), a=rng.randrange(256),
            b=rng.randrange(256), n=rng.randrange(1, 999), pos=rng.randrange(4, 1 << 30),
            gtid=rng.randrange(1, 1 << 31), h=h, m=m, s=s) + "\n"
        if size + len(line) > LOG_BLOCK_BYTES:
            return "".join(lines).encode()
        lines.append(line)
        size += len(line)


def build_error_log(path: str, gib: float) -> None:
    """A log of ``gib`` GiB: the 1 MiB block repeated."""
    block = log_block()
    with open(path, "wb") as f:
        for _ in range(int(gib * 1024)):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())


def evict_from_page_cache(path: str) -> None:
    """Drop this one file's cached pages (clean after fsync), so the next read comes from disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# --- the machine and the agent process -------------------------------------------------------


def machine(directory: str) -> dict:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        memory_kib = int(re.search(r"MemTotal:\s+(\d+)", f.read()).group(1))
    df = subprocess.run(["df", "-PT", directory], capture_output=True, text=True).stdout.splitlines()[-1].split()
    import twisted
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": f"{memory_kib / (1 << 20):.1f} GiB",
        "filesystem": f"{df[1]} on {df[0]} ({directory})",
        "kernel": platform.release(),
        "load": open("/proc/loadavg").read().split()[0],
        "python": f"{platform.python_version()} ({sys.executable}), Twisted {twisted.__version__}",
    }


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(the process's own user+system CPU, that of its reaped children) in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent on anything but idling since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as f:
        text = f.read()
    return {key: int(re.search(rf"{key}:\s+(\d+) kB", text).group(1)) for key in ("VmRSS", "VmHWM")}


# --- the client ------------------------------------------------------------------------------


class Poller:
    """One orchestrator-like client: sequential GETs on one keep-alive connection."""

    def __init__(self, agent: RunningAgent):
        self._agent = agent
        self._connection = http.client.HTTPConnection(agent.address, agent.port, timeout=60)

    def get(self, path: str) -> tuple[int, bytes]:
        target = path + "?token=" + self._agent.token
        try:
            self._connection.request("GET", target, headers=HEADERS)
            response = self._connection.getresponse()
        except (http.client.HTTPException, ConnectionError):
            self._connection.close()  # the server closed an idle connection: retry once on a new one
            self._connection.request("GET", target, headers=HEADERS)
            response = self._connection.getresponse()
        body = response.read()
        if response.getheader("content-encoding") == "gzip":
            body = gzip.decompress(body)
        return response.status, body

    def close(self) -> None:
        self._connection.close()


def _list_of_strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _integer(value) -> bool:
    return type(value) is int  # Go's int64 takes no 1.0 and no true


EXPECTED_TYPES = {
    "/api/available-snapshots-local": ("[]string", _list_of_strings),
    "/api/available-snapshots": ("[]string", _list_of_strings),
    "/api/lvs-snapshots": ("[]LogicalVolume", lambda v: isinstance(v, list) and all(isinstance(i, dict) for i in v)),
    "/api/mount": ("Mount", lambda v: isinstance(v, dict) and all(key in v for key in MOUNT_KEYS)),
    "/api/mysql-status": ("bool", lambda v: isinstance(v, bool)),
    "/api/mysql-port": ("int64", _integer),
    "/api/mysql-du": ("int64", _integer),
    "/api/mysql-datadir-available-space": ("int64", _integer),
    "/api/mysql-error-log-tail": ("[]string", _list_of_strings),
}


def check_poll_routes(agent: RunningAgent, datadir_bytes: int, tail_lines: int) -> dict[str, float]:
    """Every route answers 200 with orchestrator's type and the expected value; first-call seconds."""
    poller = Poller(agent)
    first = {}
    problems = []
    try:
        for path in POLL_ROUTES:
            started = time.perf_counter()
            status, body = poller.get(path)
            first[path] = time.perf_counter() - started
            go_type, accepts = EXPECTED_TYPES[path]
            try:
                value = json.loads(body)
            except ValueError:
                value = None
            if status != 200 or not accepts(value):
                problems.append(f"{path}: {status} {body[:300]!r} (orchestrator decodes a {go_type})")
                continue
            expected = {"/api/mysql-status": True, "/api/mysql-port": 3306, "/api/mysql-du": datadir_bytes}.get(path)
            if expected is not None and value != expected:
                problems.append(f"{path}: {value!r}, expected {expected!r}")
            if path == "/api/mysql-error-log-tail" and len(value) != tail_lines:
                problems.append(f"{path}: {len(value)} lines, expected {tail_lines}")
            if path == "/api/mount" and value["IsMounted"] is not False:
                problems.append(f"{path}: {value!r}, expected nothing mounted")
    finally:
        poller.close()
    if problems:
        raise SystemExit("the poll routes do not answer as orchestrator needs; numbers would be "
                         "meaningless:\n  " + "\n  ".join(problems) + "\nagent log:\n" + agent.log()[-3000:])
    return first


def run_load(agent: RunningAgent, routes: tuple[str, ...], pollers: int, seconds: float) -> dict:
    """``pollers`` threads repeat the sequence of GETs for ``seconds``; latencies in seconds."""
    polls: list[list[float]] = [[] for _ in range(pollers)]
    per_route: list[dict[str, list[float]]] = [{} for _ in range(pollers)]
    errors: list[str] = []
    start = threading.Barrier(pollers + 1)
    deadline = [0.0]

    def poll_repeatedly(index: int) -> None:
        poller = Poller(agent)
        mine, by_route = polls[index], per_route[index]
        try:
            start.wait()
            while time.perf_counter() < deadline[0]:
                poll_started = time.perf_counter()
                for path in routes:
                    started = time.perf_counter()
                    status, _ = poller.get(path)
                    by_route.setdefault(path, []).append(time.perf_counter() - started)
                    if status != 200:
                        errors.append(f"{path}: {status}")
                mine.append(time.perf_counter() - poll_started)
        except Exception as e:  # reported with the results, never silently
            errors.append(f"{type(e).__name__}: {e}")
        finally:
            poller.close()

    threads = [threading.Thread(target=poll_repeatedly, args=(i,), daemon=True) for i in range(pollers)]
    for thread in threads:
        thread.start()
    agent_cpu_before = cpu_seconds(agent.process.pid)
    client_cpu_before = sum(os.times()[:2])
    machine_before = machine_busy_seconds()
    deadline[0] = time.perf_counter() + seconds
    started = time.perf_counter()
    start.wait()
    for thread in threads:
        thread.join(seconds + 120)
    elapsed = time.perf_counter() - started
    agent_cpu_after = cpu_seconds(agent.process.pid)
    client_cpu = sum(os.times()[:2]) - client_cpu_before
    machine_busy = machine_busy_seconds() - machine_before
    latencies = sorted(latency for mine in polls for latency in mine)
    routes_merged: dict[str, list[float]] = {}
    for by_route in per_route:
        for path, values in by_route.items():
            routes_merged.setdefault(path, []).extend(values)
    return {
        "pollers": pollers,
        "polls": len(latencies),
        "elapsed": elapsed,
        "latencies": latencies,
        "routes": {path: sorted(values) for path, values in routes_merged.items()},
        "errors": errors,
        "agent_cpu": (agent_cpu_after[0] - agent_cpu_before[0]) / elapsed,
        "children_cpu": (agent_cpu_after[1] - agent_cpu_before[1]) / elapsed,
        "client_cpu": client_cpu / elapsed,
        # whatever else ran on the machine meanwhile (other users' work competes for the cores)
        "other_cpu": max(0.0, machine_busy - client_cpu - sum(agent_cpu_after) + sum(agent_cpu_before)) / elapsed,
    }


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, round(fraction * len(sorted_values) + 0.5))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}" if seconds < 10 else f"{seconds * 1000:.0f}"


def timed_runs(argv: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - started)
    return sorted(times)


# --- the report ------------------------------------------------------------------------------


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(row) + " |" for row in rows)]


def built_text(seconds: float, reused: bool) -> str:
    return f"built in {seconds:.1f} s" + (" by an earlier run and reused." if reused else ".")


def p50_p99(sorted_values: list[float]) -> str:
    return f"{ms(percentile(sorted_values, 0.5))} / {ms(percentile(sorted_values, 0.99))}"


def load_row(label: str, run: dict) -> list[str]:
    latencies = run["latencies"]
    polls_per_second = run["polls"] / run["elapsed"]
    return [
        label, str(run["pollers"]), f"{polls_per_second:.1f}", ms(percentile(latencies, 0.5)),
        ms(percentile(latencies, 0.99)), ms(latencies[-1] if latencies else float("nan")),
        str(sum(1 for latency in latencies if latency > 1.0)),
        f"{cpu_ms_per_poll(run):.1f}",
        f"{run['agent_cpu']:.2f} / {run['children_cpu']:.2f}", f"{run['client_cpu']:.2f}",
        f"{run['other_cpu']:.2f}", str(len(run["errors"])),
    ]


def cpu_ms_per_poll(run: dict) -> float:
    return (run["agent_cpu"] + run["children_cpu"]) / (run["polls"] / run["elapsed"]) * 1000


def reading(facts: dict) -> list[str]:
    """What the numbers say, computed from them (so a rerun cannot leave stale conclusions)."""
    single, busiest = facts["poll_runs"][0], facts["poll_runs"][-1]
    single_p99 = percentile(single["latencies"], 0.99)
    commands_cpu = statistics.median([cpu_ms_per_poll(run) for run in facts["poll_runs"]])
    option_cpu = statistics.median([cpu_ms_per_poll(run) for run in facts["optionfile_runs"]])
    null_cpu = statistics.median([cpu_ms_per_poll(run) for run in facts["null_runs"]])
    cores = facts["machine"]["nproc"]
    memory = facts["memory"]
    return [
        f"* Orchestrator's own load is {single['pollers']} poller (one poll per agent every `AgentPollMinutes`, "
        f"per orchestrator node): p99 {ms(single_p99)} ms, {1 / single_p99:.0f}x below the 1 s after which it "
        "starts a duplicate poll (B.0.3).",
        f"* With {busiest['pollers']} pollers, latency is queueing: p50 {ms(percentile(busiest['latencies'], 0.5))} ms "
        f"~ pollers / polls per second = {busiest['pollers'] / (busiest['polls'] / busiest['elapsed']) * 1000:.0f} ms. "
        f"Throughput is bounded by CPU per poll: {commands_cpu:.1f} ms (median over the load levels), so "
        f"{cores} idle cores would serve at most ~{cores * 1000 / commands_cpu:.0f} polls/s.",
        f"* What the configured commands add: reading datadir and port from the option file instead takes "
        f"{option_cpu:.1f} ms per poll; the web layer alone (null poll) {null_cpu:.1f} ms.",
        f"* The error-log tail on {facts['log_bytes'] / (1 << 30):.1f} GiB: p50 "
        f"{ms(percentile(facts['tail']['times'], 0.5))} ms (`tail -n`: "
        f"{ms(percentile(facts['tail']['tail_times'], 0.5))} ms); the agent's VmHWM went from "
        f"{memory[0][1]['VmHWM']:,} kB at start to {memory[-1][1]['VmHWM']:,} kB after everything.",
    ]


def report(facts: dict) -> list[str]:
    m = facts["machine"]
    lines = [
        SECTION_HEADING,
        "",
        f"Measured {m['date']} by `{facts['command']}` ({facts['total_seconds']:.0f} s in all).",
        "",
        f"* Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']} RAM, Linux {m['kernel']}, load average "
        f"{m['load']} at the start; "
        f"data on {m['filesystem']}; Python {m['python']}.",
        f"* Datadir: {facts['files']:,} files in {SCHEMAS:,} schema directories of {2 * TABLES_PER_SCHEMA} small "
        f"files (600 B-24 KiB) plus {len(LARGE_FILES)} large ones, {facts['datadir_bytes'] / 1e9:.2f} GB; "
        + built_text(*facts["datadir_build"]),
        f"* Error log: {facts['log_bytes'] / (1 << 30):.1f} GiB of MariaDB lines (a 1 MiB block repeated); "
        + built_text(*facts["log_build"]),
        "* Agent: a real `twistd orchagent` on 127.0.0.1 with `MySQLDatadirCommand: echo <datadir>`, "
        "`MySQLServiceStatusCommand: true`, `MySQLPortCommand: echo 3306`, `MySQLErrorLogFile` = the 2 GiB log, "
        "`SnapshotBackend: btrfs` with an empty `BtrfsSnapshotDirectory` and nothing mounted at `SnapshotMountPoint`: "
        "a poll runs the status command; datadir and port are cached for 5 s (their commands run at most "
        "that often). A second agent reads datadir and port from a `MySQLConfigFile` instead.",
        "* Client: one thread per poller, `http.client` keep-alive, Go's headers (`Accept-Encoding: gzip`), "
        "`?token=`, the 9 GETs of contract B.1.2 in order; each load level runs "
        f"{facts['seconds']:.0f} s. \"Null poll\" = 9 x `/api/hostname` under the same load (the web layer alone). "
        "CPU columns are cores in use (1.00 = one core), children = the commands the agent ran, others = "
        "everything else on the machine meanwhile (it is shared: other work competes for the same cores).",
        "",
        "Baselines in the same run:",
        "",
        f"* `du -sb` of the datadir (page cache warm): p50 {ms(facts['du_times'][len(facts['du_times']) // 2])} ms "
        f"over {len(facts['du_times'])} runs; the agent's first `mysql-du` (no cached value, walks the tree) "
        f"took {ms(facts['first_calls']['/api/mysql-du'])} ms; later polls get the cached value (refreshed in "
        "the background).",
        f"* One `setsid bash -c 'true \"$@\"' orchagent` (how every configured command is run): "
        f"p50 {ms(facts['spawn_times'][len(facts['spawn_times']) // 2])} ms from Python's subprocess.",
        "",
        "Status poll (all 9 calls, per poll):",
        "",
    ]
    rows = []
    for label, kind in (("9 status GETs, `MySQL*Command`s", "poll_runs"),
                        ("9 status GETs, `MySQLConfigFile`", "optionfile_runs"), ("null poll", "null_runs")):
        rows += [load_row(label, run) for run in facts[kind]]
    lines += table(["poll", "pollers", "polls/s", "p50 ms", "p99 ms", "max ms", "polls > 1 s",
                    "CPU ms per poll (agent + children)", "agent / children cores", "client cores",
                    "others' cores", "errors"], rows)
    ratios = ", ".join(f"{percentile(poll['latencies'], 0.5) / percentile(null['latencies'], 0.5):.1f}x at "
                       f"{poll['pollers']}" for poll, null in zip(facts["poll_runs"], facts["null_runs"]))
    lines += ["", f"p50 of the poll over p50 of the null poll (what the host facts add): {ratios}."]
    lines += ["", f"Per route (`MySQL*Command`s), p50 / p99 in ms, slowest p99 at {facts['poll_runs'][-1]['pollers']} "
              "pollers first:", ""]
    busiest = facts["poll_runs"][-1]["routes"]
    order = sorted(POLL_ROUTES, key=lambda path: -percentile(busiest.get(path, []), 0.99))
    rows = [[f"`{path.removeprefix('/api/')}`"] + [p50_p99(run["routes"].get(path, [])) for run in facts["poll_runs"]]
            for path in order]
    rows.append(["`hostname` (null poll)"] + [p50_p99(run["routes"]["/api/hostname"]) for run in facts["null_runs"]])
    lines += table(["route"] + [f"{run['pollers']} poller{'s' if run['pollers'] > 1 else ''}"
                                for run in facts["poll_runs"]], rows)
    tail = facts["tail"]
    lines += [
        "",
        f"`mysql-error-log-tail` on the {facts['log_bytes'] / (1 << 30):.1f} GiB log ({tail['calls']} sequential "
        f"calls, {TAIL_LINES} lines each):",
        "",
    ]
    lines += table(["", "first call (file evicted from the page cache)", "p50 ms", "p99 ms", "max ms"], [
        ["agent `mysql-error-log-tail`", ms(tail["cold"]), ms(percentile(tail["times"], 0.5)),
         ms(percentile(tail["times"], 0.99)), ms(tail["times"][-1])],
        [f"`tail -n {TAIL_LINES}` (baseline, incl. fork/exec)", ms(tail["tail_cold"]),
         ms(percentile(tail["tail_times"], 0.5)), ms(percentile(tail["tail_times"], 0.99)), ms(tail["tail_times"][-1])],
    ])
    memory = facts["memory"]
    lines += [
        "",
        "Agent memory (kB, /proc/<pid>/status):",
        "",
    ]
    lines += table(["when", "VmRSS", "VmHWM"], [[when, f"{v['VmRSS']:,}", f"{v['VmHWM']:,}"] for when, v in memory])
    lines += ["", "Reading:", "", *reading(facts), "", *facts["notes"], ""]
    return lines


def record(lines: list[str], path: str, heading: str = SECTION_HEADING) -> None:
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


# --- the run ---------------------------------------------------------------------------------


def agent_settings(workdir: str, agent_dir: str, datadir: str, error_log: str, variant: str) -> dict:
    """The main variant reads the datadir and port from configured commands (as V1 setups do);
    "optionfile" reads them from a my.cnf instead, so a poll runs one command instead of four."""
    snapshots, mount_point = os.path.join(agent_dir, "snapshots"), os.path.join(agent_dir, "mnt")
    os.makedirs(snapshots, exist_ok=True)
    os.makedirs(mount_point, exist_ok=True)
    settings = {
        "MySQLServiceStatusCommand": "true",
        "MySQLErrorLogFile": error_log,
        "ErrorLogTailLines": TAIL_LINES,
        "SnapshotBackend": "btrfs",
        "BtrfsSnapshotDirectory": snapshots,
        "SnapshotMountPoint": mount_point,
    }
    if variant == "commands":
        return {**settings, "MySQLDatadirCommand": f"echo {datadir}", "MySQLPortCommand": "echo 3306"}
    option_file = os.path.join(workdir, "my.cnf")
    with open(option_file, "w") as f:
        f.write(f"[mysqld]\ndatadir = {datadir}\nport = 3306\nlog_error = {error_log}\n")
    return {**settings, "MySQLConfigFile": option_file}


def measure_error_log_tail(agent: RunningAgent, error_log: str, calls: int, memory: list) -> dict:
    """The first tail with the log out of the page cache, then ``calls`` more; ``tail -n`` alongside."""
    pid = agent.process.pid
    poller = Poller(agent)
    try:
        evict_from_page_cache(error_log)
        started = time.perf_counter()
        status, body = poller.get("/api/mysql-error-log-tail")
        cold = time.perf_counter() - started
        assert status == 200 and len(json.loads(body)) == TAIL_LINES, body[:300]
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            status, body = poller.get("/api/mysql-error-log-tail")
            times.append(time.perf_counter() - started)
            assert status == 200, body[:300]
    finally:
        poller.close()
    memory.append((f"after {calls + 1} error-log tails", memory_kib(pid)))
    evict_from_page_cache(error_log)
    tail = ["tail", "-n", str(TAIL_LINES), error_log]
    return {"calls": calls, "cold": cold, "times": sorted(times), "tail_cold": timed_runs(tail, 1)[0],
            "tail_times": timed_runs(tail, calls)}


def measure_load(agent: RunningAgent, kinds: dict[str, tuple[str, ...]], levels: list[int], seconds: float,
                 memory: list | None = None) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for pollers in levels:
        for kind, routes in kinds.items():
            result = run_load(agent, routes, pollers, seconds)
            runs[kind].append(result)
            print(f"{kind:10s} x{pollers:3d}: {result['polls']} polls in {result['elapsed']:.1f} s, "
                  f"p50 {ms(percentile(result['latencies'], 0.5))} ms, "
                  f"p99 {ms(percentile(result['latencies'], 0.99))} ms, agent CPU {result['agent_cpu']:.2f}, "
                  f"children {result['children_cpu']:.2f}, client {result['client_cpu']:.2f}, "
                  f"others {result['other_cpu']:.2f}, errors {len(result['errors'])} {result['errors'][:3]}",
                  flush=True)
            time.sleep(0.5)
        if memory is not None:
            memory.append((f"after the {pollers}-poller runs", memory_kib(agent.process.pid)))
    if agent.process.poll() is not None:
        raise SystemExit("the agent died during the benchmark:\n" + agent.log()[-3000:])
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "orchagent-bench-poll"),
                        help="where the datadir and the log are built (removed afterwards unless --keep-data)")
    parser.add_argument("--seconds", type=float, default=10, help="duration of each load level")
    parser.add_argument("--pollers", default="1,10,50", help="concurrent pollers per load level")
    parser.add_argument("--log-gib", type=float, default=2.0)
    parser.add_argument("--tail-calls", type=int, default=50)
    parser.add_argument("--record", action="store_true", help="write the figures into bench/RESULTS.md")
    parser.add_argument("--keep-data", action="store_true",
                        help="keep the datadir and the log under --workdir for the next run (about a minute to build)")
    args = parser.parse_args()
    began = time.monotonic()
    levels = [int(n) for n in args.pollers.split(",")]

    os.makedirs(args.workdir, exist_ok=True)
    facts: dict = {"machine": machine(args.workdir), "seconds": args.seconds, "notes": [],
                   "command": "./run-bench poll" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")}
    print(json.dumps(facts["machine"], indent=1), flush=True)
    if "tmpfs" in facts["machine"]["filesystem"]:
        print("warning: the work directory is on tmpfs, not on a disk; pass --workdir", flush=True)

    datadir = os.path.join(args.workdir, "datadir")
    print(f"building (or reusing) the datadir under {datadir} ...", flush=True)
    facts["datadir_build"] = build_once(datadir, build_datadir)
    facts["files"] = disk_size(datadir)
    error_log = os.path.join(args.workdir, f"mariadb-error-{args.log_gib:g}GiB.log")
    print(f"building (or reusing) the {args.log_gib} GiB error log {error_log} ...", flush=True)
    facts["log_build"] = build_once(error_log, lambda path: build_error_log(path, args.log_gib))
    facts["log_bytes"] = os.path.getsize(error_log)
    print(f"datadir built in {facts['datadir_build'][0]} s, log written in {facts['log_build'][0]} s "
          f"(reused: {facts['datadir_build'][1]}, {facts['log_build'][1]})", flush=True)

    facts["du_times"] = timed_runs(["du", "-sb", datadir], 3)
    du = subprocess.run(["du", "-sb", datadir], capture_output=True, text=True, check=True).stdout
    facts["datadir_bytes"] = int(du.split()[0])
    facts["spawn_times"] = timed_runs(["setsid", "bash", "-c", 'true "$@"', "orchagent"], 20)
    print(f"du -sb: {[ms(t) for t in facts['du_times']]} ms, {facts['datadir_bytes']:,} bytes, "
          f"{facts['files']:,} files", flush=True)

    for variant in ("commands", "optionfile"):
        agent_dir = tempfile.mkdtemp(prefix="orchagent-bench-agent-")
        agent = start_agent(agent_settings(args.workdir, agent_dir, datadir, error_log, variant),
                            address="127.0.0.1", directory=agent_dir)
        try:
            memory = [("after start", memory_kib(agent.process.pid))]
            first_calls = check_poll_routes(agent, facts["datadir_bytes"], TAIL_LINES)
            print(f"{variant}: all 9 routes answer as orchestrator decodes; first calls (ms): "
                  + ", ".join(f"{p.removeprefix('/api/')} {ms(t)}" for p, t in first_calls.items()), flush=True)
            if variant == "commands":
                facts["first_calls"] = first_calls
                memory.append(("after checking the 9 routes", memory_kib(agent.process.pid)))
                # before the load, so the tail's own effect on memory shows
                facts["tail"] = measure_error_log_tail(agent, error_log, args.tail_calls, memory)
                tail = facts["tail"]
                print(f"error-log tail: cold {ms(tail['cold'])} ms, p50 {ms(percentile(tail['times'], 0.5))} ms; "
                      f"tail -n {TAIL_LINES}: p50 {ms(percentile(tail['tail_times'], 0.5))} ms", flush=True)
                runs = measure_load(agent, {"null": NULL_ROUTES, "poll": POLL_ROUTES}, levels, args.seconds, memory)
                facts["null_runs"], facts["poll_runs"], facts["memory"] = runs["null"], runs["poll"], memory
                log_size = os.path.getsize(os.path.join(agent_dir, "agent.log"))
                leaks = agent.log().count(agent.token)
                facts["notes"].append(
                    f"The agent's log grew to {log_size:,} bytes during the run (its default log level)"
                    + (f"; it holds the token {leaks:,} times (Site's access log quotes each URL with its "
                       "`?token=`)." if leaks else "."))
            else:
                facts["optionfile_runs"] = measure_load(agent, {"optionfile": POLL_ROUTES}, levels,
                                                        args.seconds)["optionfile"]
        finally:
            exit_status = agent.stop()
        if exit_status != 0:
            facts["notes"].append(f"The agent ({variant}) exited with status {exit_status} on SIGTERM.")
        shutil.rmtree(agent_dir, ignore_errors=True)

    facts["total_seconds"] = time.monotonic() - began
    lines = report(facts)
    print("\n" + "\n".join(lines), flush=True)
    if args.record:
        record(lines, os.path.join(REPO, "bench", "RESULTS.md"))
        print("recorded in bench/RESULTS.md", flush=True)
    if not args.keep_data:
        shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
