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
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.datasets import (  # noqa: E402
    LARGE_FILES, SCHEMAS, TABLES_PER_SCHEMA, build_error_log, build_once, build_small_files_datadir, disk_size,
    evict_from_page_cache)
from bench.machine import cpu_seconds, machine, machine_busy_seconds, memory_kib  # noqa: E402
from bench.polling import NULL_ROUTES, POLL_ROUTES, TAIL_LINES, Poller, agent_settings  # noqa: E402
from bench.report import (  # noqa: E402
    add_record_option, command, machine_line, ms, p50_p99, percentile, record, table)
from testbed.agent import RunningAgent, start_agent  # noqa: E402
from testbed.orchestrator import ContractViolation, HostAgent, Orchestrator  # noqa: E402

SECTION_HEADING = "## Host facts: status poll and error-log tail (issue 3)"


# --- the measurements ------------------------------------------------------------------------


def check_poll_routes(agent: RunningAgent, datadir_bytes: int, tail_lines: int) -> dict[str, float]:
    """Every route answers as orchestrator decodes it (its own client, Go's rules) with the expected
    value; the first call's seconds per route."""
    calls = []
    try:
        facts = Orchestrator().get_agent(HostAgent.of(agent), record=calls)
        problems = [f"{field}: {error}" for field, error in facts.errors.items()]
    except ContractViolation as e:
        facts, problems = None, [str(e)]
    if facts is not None:
        for field, value, expected in (("MySQLRunning", facts.MySQLRunning, True), ("MySQLPort", facts.MySQLPort, 3306),
                                       ("MySQLDiskUsage", facts.MySQLDiskUsage, datadir_bytes),
                                       ("MySQLErrorLogTail lines", len(facts.MySQLErrorLogTail), tail_lines),
                                       ("MountPoint IsMounted", facts.MountPoint.get("IsMounted"), False)):
            if value != expected:
                problems.append(f"{field}: {value!r}, expected {expected!r}")
    if problems:
        raise SystemExit("the poll routes do not answer as orchestrator needs; numbers would be "
                         "meaningless:\n  " + "\n  ".join(problems) + "\nagent log:\n" + agent.log()[-3000:])
    return {"/api/" + call.command: call.seconds for call in calls}


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
    pid = agent.process.pid
    agent_cpu_before = cpu_seconds(pid), cpu_seconds(pid, children=True)
    client_cpu_before = sum(os.times()[:2])
    machine_before = machine_busy_seconds()
    deadline[0] = time.perf_counter() + seconds
    started = time.perf_counter()
    start.wait()
    for thread in threads:
        thread.join(seconds + 120)
    elapsed = time.perf_counter() - started
    agent_cpu_after = cpu_seconds(pid), cpu_seconds(pid, children=True)
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


def timed_runs(argv: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - started)
    return sorted(times)


# --- the report ------------------------------------------------------------------------------


def built_text(seconds: float, reused: bool) -> str:
    return f"built in {seconds:.1f} s" + (" by an earlier run and reused." if reused else ".")


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
        machine_line(m),
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


# --- the run ---------------------------------------------------------------------------------


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
    add_record_option(parser)
    parser.add_argument("--keep-data", action="store_true",
                        help="keep the datadir and the log under --workdir for the next run (about a minute to build)")
    args = parser.parse_args()
    began = time.monotonic()
    levels = [int(n) for n in args.pollers.split(",")]

    os.makedirs(args.workdir, exist_ok=True)
    facts: dict = {"machine": machine(args.workdir), "seconds": args.seconds, "notes": [],
                   "command": command("poll")}
    print(json.dumps(facts["machine"], indent=1), flush=True)
    if "tmpfs" in facts["machine"]["filesystem"]:
        print("warning: the work directory is on tmpfs, not on a disk; pass --workdir", flush=True)

    datadir = os.path.join(args.workdir, "datadir")
    print(f"building (or reusing) the datadir under {datadir} ...", flush=True)
    facts["datadir_build"] = build_once(datadir, build_small_files_datadir)
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
        record(lines, SECTION_HEADING)
    if not args.keep_data:
        shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
