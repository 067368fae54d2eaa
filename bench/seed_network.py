"""Benchmark: seeds over a shaped link, orchagent against the pipelines DBAs build by hand.

    sudo ./run-bench seed_network [--links 100mbit,1gbit,10gbit] [--datasets sysbench,tree]
                                  [--methods ...] [--repeat 1] [--record] [--keep-data]

Both ends run inside a private network namespace whose loopback is shaped with ``tbf`` to the
link's rate (``testbed/netns.py``): the source on 127.0.0.1, the target on 127.0.0.2, so
every byte crosses the link, and nothing leaves the namespace.  Data sets: (1) a MariaDB datadir
prepared by ``sysbench oltp_read_write`` (real InnoDB pages, which compress about 3x with
``zstd -1``), (2) the half-random datadir-like tree of ``seed_transfer`` (incompressible), and on
request (3) ``bigfile``: one big table (half compressible) and a few small files, which several
streams carry only in ranges.
Methods, in the same run, page cache dropped before each:

* ``orchagent``: two real agents (``twistd orchagent``), seeded through the API as orchestrator
  does (receive, send, poll ``seed-command-completed``), every byte verified; ``orchagent_tls``
  the same with ``UseSSL`` and certificates from a throw-away CA; ``orchagent_nocompress`` with
  ``SeedCompression`` ``none``, ``orchagent_zstd`` with ``zstd`` (every block compressed: what
  ``auto`` should reach where the link is the limit); ``orchagent_1stream``, ``orchagent_2streams``
  and ``orchagent_4streams`` with ``SeedParallelStreams`` 1, 2 and 4 (the default, ``orchagent``,
  lets the agent choose);
* ``tar_socat``: ``tar -c | socat`` to ``socat | tar -x``;
* ``tar_zstd_socat``: ``tar -c | zstd -1 -T0 | socat`` to ``socat | zstd -d | tar -x``, the best
  hand pipeline;
* ``tar_socat_tls``: ``tar | socat`` with socat's OpenSSL, the receiver verified by name.

Each time runs from the start of the transfer until the target has everything and ``sync``
returned.  Prints MB/s per method, the ratios, the share of the link's rate, and the agents'
peak RSS.  This is a script, not library code: it runs tools with ``subprocess`` directly.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from bench.datasets import (build_big_file, build_once, build_tree, claim, drop_caches, fresh_target,  # noqa: E402
                            sysbench_datadir, tree_bytes)
from bench.machine import machine  # noqa: E402
from bench.report import add_record_option, command, machine_line, ratio, record  # noqa: E402
from bench.seed_methods import AgentPair, tar_socat, tls_files  # noqa: E402
from testbed.netns import NetworkNamespace  # noqa: E402

SECTION_HEADING = "## Seeds over a shaped link (`bench/seed_network.py`)"
LINK_BITS = {"100mbit": 100e6, "1gbit": 1e9, "10gbit": 10e9}
METHODS = "orchagent,orchagent_nocompress,orchagent_tls,tar_socat,tar_zstd_socat,tar_socat_tls"
AGENT_METHODS = {"orchagent": {}, "orchagent_nocompress": {"SeedCompression": "none"},
                 "orchagent_zstd": {"SeedCompression": "zstd"}, "orchagent_tls": {},
                 **{f"orchagent_{n}stream{'s' if n > 1 else ''}": {"SeedParallelStreams": n} for n in (1, 2, 4)}}


def measure(args, net: NetworkNamespace, link: str, source: str, target: str, ca, socat_tls) -> dict[str, list]:
    workdir = os.path.join(args.dir, f"agents-{os.getpid()}")
    pairs: dict[str, AgentPair] = {}
    results: dict[str, list] = {m: [] for m in args.methods}
    try:
        for method, extra in AGENT_METHODS.items():
            if method in args.methods:
                pairs[method] = AgentPair(os.path.join(workdir, method), source, target, net=net,
                                          ca=ca if method.endswith("_tls") else None, extra=extra)
        runners = {
            **{method: pair.seed for method, pair in pairs.items()},
            "tar_socat": lambda: tar_socat(source, target, net=net),
            "tar_zstd_socat": lambda: tar_socat(source, target, net=net, zstd=True),
            "tar_socat_tls": lambda: tar_socat(source, target, net=net, tls=socat_tls),
        }
        for round_ in range(args.repeat):
            for method in args.methods:
                fresh_target(target)
                drop_caches()
                result = runners[method]()
                results[method].append(result)
                rss = (f"  rss {rss_at_start(result)} -> {peak_rss(result)} MB, cpu {cpu(result)} s, "
                       f"compression {result['ratio']}x" if "source" in result else "")
                print(f"  {link} round {round_ + 1} {method:18s} {result['seconds']:7.2f} s{rss}", flush=True)
        if pairs:
            reset = all(pair.peak_reset for pair in pairs.values())
            print(f"  (rss: source and target agent at the round's start -> their peak "
                  f"{'since it' if reset else 'since the agent started (resetting VmHWM was not permitted)'}; "
                  "an agent pair serves every round of its method: round 2 on are its later seeds)", flush=True)
    finally:
        for pair in pairs.values():
            pair.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def peak_rss(result: dict) -> list[float]:
    """An agents round's peak RSS in MB, source and target."""
    return [result[side]["peak_rss_mb"] for side in ("source", "target")]


def rss_at_start(result: dict) -> list[float]:
    """An agents round's RSS in MB when it began (what the agents kept from the rounds before), source and target."""
    return [result[side]["start_rss_mb"] for side in ("source", "target")]


def cpu(result: dict) -> list[float]:
    """An agents round's CPU seconds, source and target (both share the machine's cores)."""
    return [result[side]["cpu_seconds"] for side in ("source", "target")]


def report(link: str, dataset: str, nbytes: int, results: dict[str, list]) -> list[str]:
    link_mb = LINK_BITS.get(link, 0) / 8 / 1e6
    median = {m: statistics.median(r["seconds"] for r in rs) for m, rs in results.items() if rs}
    lines = [f"{link}, {dataset} ({nbytes / 1e6:.0f} MB):"]
    for method, seconds in median.items():
        rate = nbytes / 1e6 / seconds
        share = f", {rate / link_mb:.0%} of the link" if link_mb else ""
        rss = [peak_rss(r) for r in results[method] if "source" in r]
        peak = f", peak RSS {max(x for pair in rss for x in pair)} MB (either agent, any round)" if rss else ""
        if rss:
            ratios = statistics.median(float(r["ratio"]) for r in results[method])
            cpus = [statistics.median(c) for c in zip(*(cpu(r) for r in results[method]))]
            peak += f", ratio {ratios:.2f}x, CPU-s source {cpus[0]:.2f} target {cpus[1]:.2f}"
        lines.append(f"  {method:18s} {seconds:7.2f} s {rate:7.1f} MB/s{share}{peak}")
    for ours, baseline in (("orchagent", "tar_socat"), ("orchagent", "tar_zstd_socat"),
                           ("tar_zstd_socat", "tar_socat"), ("orchagent_tls", "tar_socat_tls"),
                           ("orchagent", "orchagent_nocompress"), ("orchagent_nocompress", "tar_socat"),
                           ("orchagent", "orchagent_zstd"), ("orchagent_zstd", "tar_zstd_socat"),
                           ("orchagent_2streams", "orchagent_1stream"), ("orchagent_4streams", "orchagent_1stream"),
                           ("orchagent_1stream", "tar_zstd_socat"), ("orchagent_2streams", "tar_zstd_socat"),
                           ("orchagent_4streams", "tar_zstd_socat")):
        if ours in median and baseline in median:
            lines.append(f"  {ours} / {baseline}: {ratio(median[baseline], median[ours])}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default="/var/tmp/orchagent-bench-network")
    parser.add_argument("--links", default="100mbit,1gbit,10gbit")
    parser.add_argument("--datasets", default="sysbench,tree")
    parser.add_argument("--methods", default=METHODS)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--sysbench-tables", type=int, default=4)
    parser.add_argument("--sysbench-rows", type=int, default=1_000_000, help="rows per table (1M: about 240 MB)")
    parser.add_argument("--tree-mb", type=int, default=1024)
    parser.add_argument("--bigfile-mb", type=int, default=1024)
    add_record_option(parser)
    parser.add_argument("--keep-data", action="store_true", help="keep the data sets for the next run")
    args = parser.parse_args()
    args.methods = args.methods.split(",")
    if os.geteuid() != 0:
        raise SystemExit("seed_network needs root: network namespaces, tc and dropping the page cache")
    claim(args.dir)
    info = machine(args.dir)
    lines = [SECTION_HEADING, "", f"Measured {info['date']} by `{command('seed_network')}`.", "",
             machine_line(info), "", "```"]
    datasets = {}
    if "sysbench" in args.datasets:
        print("building (or reusing) the sysbench datadir ...", flush=True)
        datasets["sysbench"] = sysbench_datadir(os.path.join(args.dir, "sysbench"), args.sysbench_tables,
                                                args.sysbench_rows)
    if "tree" in args.datasets:
        print("building (or reusing) the tree ...", flush=True)
        datasets["tree"] = os.path.join(args.dir, f"tree-{args.tree_mb}mb")
        build_once(datasets["tree"], lambda path: build_tree(path, args.tree_mb))
    if "bigfile" in args.datasets:
        print("building (or reusing) the big file ...", flush=True)
        datasets["bigfile"] = os.path.join(args.dir, f"bigfile-{args.bigfile_mb}mb")
        build_once(datasets["bigfile"], lambda path: build_big_file(path, args.bigfile_mb))
    target = os.path.join(args.dir, "target")
    ca, socat_tls = tls_files(os.path.join(args.dir, f"tls-{os.getpid()}"))
    try:
        for link in args.links.split(","):
            with NetworkNamespace(rate=link) as net:
                for name, source in datasets.items():
                    files, nbytes = tree_bytes(source)
                    print(f"{link}: {name}, {files} files, {nbytes / 1e6:.0f} MB", flush=True)
                    results = measure(args, net, link, source, target, ca, socat_tls)
                    lines += report(link, name, nbytes, results)
                    print("\n".join(lines[-len(results) - 5:]), flush=True)
    finally:
        shutil.rmtree(target, ignore_errors=True)
        shutil.rmtree(os.path.join(args.dir, f"tls-{os.getpid()}"), ignore_errors=True)
        if not args.keep_data:
            shutil.rmtree(args.dir, ignore_errors=True)
    lines.append("```")
    print("\n".join(lines))
    if args.record:
        record(lines, SECTION_HEADING)


if __name__ == "__main__":
    main()
