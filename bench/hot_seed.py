"""Benchmark: a hot seed through two agents against the hand pipeline DBAs use, from a server under load.

    sudo ./run-bench hot_seed [--repeat 2] [--methods orchagent,hand] [--link 1gbit] [--record] [--keep-data]

The source is a running MariaDB (binary log on, so GTIDs) on a copy of the sysbench datadir of
``bench/datasets.py`` (4 tables of 1M rows, 1175 MB; built once, in about 30 s, and kept with
``--keep-data``), with a 1 GB buffer pool.  A ``sysbench oltp_write_only`` load (2 threads, as fast as
it goes) runs against it from start to end.  Each round runs both methods, the order swapped every
round, over loopback (source 127.0.0.1, target 127.0.0.2; with ``--link``, inside a network
namespace whose loopback is shaped to that rate), page cache dropped before each:

* ``orchagent``: two real agents (``twistd orchagent``), the source with ``SnapshotBackend:
  "hotbackup"``, driven as orchestrator drives a seed: ``mountlv`` of the hot-backup volume,
  ``receive-mysql-seed-data``, ``send-mysql-seed-data``, then ``seed-command-completed`` polled
  every 0.1 s until the target has extracted, prepared, owned and moved in the copy (every byte
  verified on the way), plus ``sync``;
* ``hand``: ``mariabackup --backup --stream=mbstream | socat`` to ``socat | mbstream -x``, then
  ``mariabackup --prepare`` and ``sync`` (``bench.seed_methods.mariabackup_socat``);
* ``orchagent_nocompress`` (not run unless ``--methods`` names it): ``orchagent`` with
  ``SeedCompression: "none"``, two more agents (what the default ``auto`` costs or saves here).

Before each method the load's tps is taken over a baseline window (``--baseline-seconds``), and
again while the method runs.  Prints each method's time, when the stream was extracted (the
extractor ended) and the prepare's seconds (both from the tools' lifetimes, sampled every 0.1 s),
MB/s of the prepared copy, the tps before and during, the ratios of the methods, both agents'
peak RSS (VmHWM, reset before each seed) and CPU seconds, and the tools' peak RSS (sampled).
This is a script, not library code: it runs tools with ``subprocess`` directly.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from typing import Callable, NamedTuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from bench.datasets import claim, drop_caches, fresh_target, sysbench_datadir, tree_bytes  # noqa: E402
from bench.machine import ToolWatch, load, machine  # noqa: E402
from bench.report import add_record_option, command, machine_line, record, table  # noqa: E402
from bench.seed_methods import AgentPair, mariabackup_socat  # noqa: E402
from bench.write_load import SysbenchLoad  # noqa: E402
from testbed.mariadb import MariaDBSandbox  # noqa: E402
from testbed.netns import NetworkNamespace  # noqa: E402

SECTION_HEADING = "## Hot seed (`bench/hot_seed.py`, issue 13)"
METHODS = ("orchagent", "hand")
#: The agents' settings of each agents method (two more agents each).
AGENT_METHODS = {"orchagent": {}, "orchagent_nocompress": {"SeedCompression": "none"}}
#: The tools the table shows (not the checks of mountlv, the shells and setsid around commands).
PIPELINE_TOOLS = ("mariabackup --backup", "mariabackup --prepare", "mbstream -x", "socat -u")
SOURCE_OPTIONS = {"innodb_buffer_pool_size": "1G", "innodb_log_file_size": "96M"}


def start_source(dataset: str, directory: str) -> MariaDBSandbox:
    """A server with its binary log on, on a copy of ``dataset``."""
    sandbox = MariaDBSandbox(directory, log_bin=True, extra_options=SOURCE_OPTIONS)
    subprocess.run(["cp", "-a", dataset, sandbox.datadir], check=True)
    sandbox.start()
    return sandbox


def backup_defaults(directory: str, sandbox: MariaDBSandbox) -> str:
    """The backup tool's option file (root over the socket), root-only as HotBackupDefaultsFile must be."""
    path = os.path.join(directory, "backup.cnf")
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(f"[client]\nuser=root\nsocket={sandbox.socket}\n")
    return path


class Method(NamedTuple):
    """One way of copying: its run (returns its figures), where its copy ends up, and whose processes
    are its tools (those under ``roots`` but not under ``skip``)."""

    run: Callable[[], dict]
    copy: str
    roots: list[int]
    skip: tuple[int, ...] = ()


def start_agents(stack: contextlib.ExitStack, directory: str, source: MariaDBSandbox, defaults: str,
                 settings: dict, net: NetworkNamespace | None) -> tuple[AgentPair, str]:
    """A source agent with the hot-backup backend and a target agent whose (stopped) server's datadir is
    empty, with ``settings`` on both (inside ``net`` when given); the pair and that datadir."""
    target = MariaDBSandbox(os.path.join(directory, "target"))  # never started: the seed's destination
    os.makedirs(target.datadir)
    pair = AgentPair(os.path.join(directory, "agents"), source.datadir, target.datadir, net=net, mount=True,
                     extra=settings, sides={"source": {**source.config_values(), "SnapshotBackend": "hotbackup",
                                       "HotBackupDefaultsFile": defaults},
                            "target": target.config_values()})
    stack.callback(pair.stop)
    return pair, target.datadir


def measure(args, methods: dict[str, Method], writes: SysbenchLoad) -> dict[str, list[dict]]:
    """Every round's figures per method."""
    results: dict[str, list[dict]] = {name: [] for name in methods}
    for round_ in range(args.repeat):
        for name in list(methods) if round_ % 2 == 0 else list(methods)[::-1]:
            method = methods[name]
            if name == "hand":
                fresh_target(method.copy)  # the agents empty theirs with delete-mysql-datadir, as orchestrator does
            baseline_start = time.monotonic()
            time.sleep(args.baseline_seconds)
            tps_before = writes.tps(baseline_start, time.monotonic())
            drop_caches()
            with ToolWatch(method.roots, method.skip) as tools:
                result = method.run()
            ended = time.monotonic()
            started = ended - result["seconds"]
            result.update(tps_before=tps_before, tps_during=writes.tps(started, ended), load=load(),
                          bytes=tree_bytes(method.copy)[1], tools=tools.peaks_mb, **phases(tools.seen, started))
            results[name].append(result)
            print(f"round {round_ + 1} {describe(name, result)}", flush=True)
    return results


def phases(seen: dict[str, tuple[float, float]], started: float) -> dict[str, float]:
    """From the tools' lifetimes: the seconds until the stream was extracted (the extractor ended), and
    the prepare's seconds."""
    prepare = seen.get("mariabackup --prepare", (float("nan"),) * 2)
    return {"extracted": seen.get("mbstream -x", (0, float("nan")))[1] - started, "prepare": prepare[1] - prepare[0]}


def describe(method: str, result: dict) -> str:
    agents = "".join(f", {side} agent peak RSS {result[side]['peak_rss_mb']} MB, CPU {result[side]['cpu_seconds']} s"
                     for side in ("source", "target") if side in result)
    if "ratio" in result:
        agents += f", compression {result['ratio']}x, mountlv {result['mount_seconds']:.2f} s"
    tools = ", ".join(f"{name} {mb:.0f} MB" for name, mb in sorted(result["tools"].items()))
    return (f"{method:9s} {result['seconds']:6.1f} s (stream extracted at {result['extracted']:.1f} s, "
            f"prepare {result['prepare']:.1f} s), "
            f"{result['bytes'] / 1e6 / result['seconds']:5.1f} MB/s; tps {result['tps_before']:.0f} before, "
            f"{result['tps_during']:.0f} during{agents}; tools: {tools}; load {result['load']}")


def report(results: dict[str, list[dict]]) -> list[str]:
    median = {m: statistics.median(r["seconds"] for r in rs) for m, rs in results.items() if rs}
    rows = []
    for method, rs in results.items():
        seconds = median[method]
        extracted = statistics.median(r["extracted"] for r in rs)
        prepare = statistics.median(r["prepare"] for r in rs)
        rate = statistics.median(r["bytes"] / 1e6 / r["seconds"] for r in rs)
        before = statistics.median(r["tps_before"] for r in rs)
        during = statistics.median(r["tps_during"] for r in rs)
        rss = [f"{side} {max(r[side]['peak_rss_mb'] for r in rs)} MB" for side in ("source", "target") if side in rs[0]]
        tools = {}
        for r in rs:
            for name, mb in r["tools"].items():
                if name in PIPELINE_TOOLS:
                    tools[name] = max(mb, tools.get(name, 0.0))
        rows.append([method, f"{seconds:.1f} s", f"{extracted:.1f} s", f"{prepare:.1f} s", f"{rate:.1f}",
                     f"{before:.0f}", f"{during:.0f} ({during / before - 1:+.0%})", ", ".join(rss) or "-",
                     ", ".join(f"{name} {mb:.0f} MB" for name, mb in sorted(tools.items()))])
    lines = table(["method", "time (median)", "stream extracted at", "prepare", "MB/s", "tps before", "tps during",
                   "agents' peak RSS", "tools' peak RSS"], rows)
    lines.append("")
    for ours, baseline in (("orchagent", "hand"), ("orchagent_nocompress", "hand"),
                           ("orchagent", "orchagent_nocompress")):
        if ours in median and baseline in median:
            rounds = " ".join(f"{o['seconds'] / b['seconds']:.2f}" for o, b in zip(results[ours], results[baseline]))
            lines.append(f"* {ours} / {baseline}, time: **{median[ours] / median[baseline]:.2f}** (throughput "
                         f"{median[baseline] / median[ours]:.2f}x); each round: {rounds}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default="/var/tmp/orchagent-bench-hot")
    parser.add_argument("--repeat", type=int, default=2, help="rounds (each runs every method; order swapped)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"run in this order (swapped every other round), of {', '.join([*AGENT_METHODS, 'hand'])}")
    parser.add_argument("--tables", type=int, default=4)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per table (4 x 1M: 1175 MB)")
    parser.add_argument("--load-threads", type=int, default=2)
    parser.add_argument("--load-rate", type=int, default=0, help="the load's target tps (0: as fast as it goes)")
    parser.add_argument("--warmup-seconds", type=float, default=15, help="load before the first baseline")
    parser.add_argument("--baseline-seconds", type=float, default=10)
    parser.add_argument("--prepare-memory-mb", type=int, default=0,
                        help="the target agent's HotBackupPrepareMemoryMB (0: its default)")
    parser.add_argument("--link", default="", help="e.g. 1gbit: agents and socats inside a network namespace "
                        "whose loopback is shaped to this rate (default: plain loopback)")
    add_record_option(parser)
    parser.add_argument("--keep-data", action="store_true", help="keep the data set for the next run")
    args = parser.parse_args()
    args.methods = args.methods.split(",")
    if os.geteuid() != 0:
        raise SystemExit("hot_seed needs root: root-only backup credentials, dropping the page cache")
    claim(args.dir)
    info = machine(args.dir)
    print(f"machine: {info['nproc']} cpus, {info['cpu']}, {info['memory']} RAM, {info['filesystem']}, "
          f"load {info['load']}", flush=True)
    print("building (or reusing) the sysbench datadir ...", flush=True)
    dataset = sysbench_datadir(os.path.join(args.dir, "sysbench"), args.tables, args.rows)
    files, nbytes = tree_bytes(dataset)
    print(f"data: {files} files, {nbytes / 1e6:.0f} MB", flush=True)
    work = os.path.join(args.dir, f"run-{os.getpid()}")
    try:
        with contextlib.ExitStack() as stack:
            os.makedirs(work)
            source = start_source(dataset, os.path.join(work, "source"))
            stack.callback(source.stop)
            defaults = backup_defaults(work, source)
            net = stack.enter_context(NetworkNamespace(rate=args.link)) if args.link else None
            memory = {"HotBackupPrepareMemoryMB": args.prepare_memory_mb} if args.prepare_memory_mb else {}
            methods: dict[str, Method] = {}
            for name in args.methods:
                if name in AGENT_METHODS:
                    pair, copy = start_agents(stack, os.path.join(work, name), source, defaults,
                                              {**AGENT_METHODS[name], **memory}, net)
                    methods[name] = Method(pair.seed, copy, [agent.process.pid for agent in pair.agents])
                    print(f"{name} agents: RSS after start "
                          + ", ".join(f"{side} {mb} MB" for side, mb in pair.started_rss_mb.items()), flush=True)
            writes = SysbenchLoad(source.socket, tables=args.tables, rows=args.rows, threads=args.load_threads,
                                  rate=args.load_rate)
            stack.callback(writes.stop)
            if "hand" in args.methods:
                hand_dir = os.path.join(work, "hand")
                agents = tuple(pid for method in methods.values() for pid in method.roots)
                methods["hand"] = Method(lambda: mariabackup_socat(defaults, source.datadir, hand_dir, work, net=net),
                                         hand_dir, [os.getpid()], (writes.process.pid, *agents))
            methods = {name: methods[name] for name in args.methods}
            time.sleep(args.warmup_seconds)
            results = measure(args, methods, writes)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not args.keep_data:
            shutil.rmtree(args.dir, ignore_errors=True)
    heading = f"## Hot seed over a {args.link} link (`bench/hot_seed.py --link`)" if args.link else SECTION_HEADING
    lines = [heading, "", f"Measured {info['date']} by `{command('hot_seed')}` (as root).", "",
             machine_line(info), f"* Data: the sysbench datadir, {args.tables} x {args.rows} rows, {files} files, "
             f"{nbytes / 1e6:.0f} MB; load: `sysbench oltp_write_only`, {args.load_threads} threads, "
             f"{'rate ' + str(args.load_rate) if args.load_rate else 'unthrottled'}; "
             f"{'inside a network namespace whose loopback is shaped to ' + args.link if args.link else 'loopback'}; "
             f"load average at the end {load()}.", "", *report(results)]
    print("\n".join(lines))
    if args.record:
        record(lines, heading)


if __name__ == "__main__":
    main()
