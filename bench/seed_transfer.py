"""Benchmark: the built-in seed transfer against ``tar | socat`` and a local ``cp -r`` + ``sync``.

    sudo ./run-bench seed_transfer [--dir /var/tmp/orchagent-bench] [--size-mb 1024] [--repeat 3] [--keep-data]

Builds (or, with ``--keep-data`` last time, reuses) a datadir-like tree under ``--dir`` on the
real disk (a few large files, thousands of small ones, incompressible data), then, in the same run on the same data and
interleaved so that background noise hits every method alike:

(a) orchagent: receiver and sender each in its own process (``bench/seed_runner.py``), over
    127.0.0.1, verification on; the time runs from starting the sender until both processes have
    exited, i.e. after the receiver fsynced everything and moved it into place;
(b) ``socat -u TCP-LISTEN | tar -x`` receiving from ``tar -c | socat -u - TCP:``, then ``sync``;
(c) ``cp -r`` + ``sync``: what the disk allows;
(d) agents: the same engine inside two real ``twistd orchagent`` processes, driven as orchestrator
    drives them: a source agent on 127.0.0.1 whose datadir is the tree (MySQL reads as stopped,
    no snapshot mounted, so it sends the datadir itself) and a target agent on 127.0.0.2 whose
    datadir is the target directory.  The agents start once per run; each round is a new seed
    id.  The time runs from ``receive-mysql-seed-data`` (then at once ``send-mysql-seed-data``)
    until the target's ``seed-command-completed`` reads true (polled every 0.1 s), plus ``sync``.
    Each agent's peak RSS is its VmHWM, reset before every round (``/proc/<pid>/clear_refs``);
    its CPU is utime + stime from ``/proc/<pid>/stat``, before and after.

Two more methods, not run unless ``--methods`` names them: (e) ``orchagent_tls``, (a) over TLS
set up as an agent with ``UseSSL`` sets it up, and (f) ``tar_socat_tls``, (b) with socat's
``OPENSSL`` addresses (the receiver's certificate verified by name, as orchagent's sender does);
both with a throw-away CA made for the run; and (g) ``orchagent_nocompress``, (a) with
``SeedCompression`` ``none`` (what (a)'s default ``auto`` costs or saves on a link faster than the disk).

Before every run the target is removed, ``sync`` ran and the page cache is dropped when this
process may write ``/proc/sys/vm/drop_caches`` (the output says whether it could).  Prints the
median throughput of each method, the ratios, and each side's peak RSS and CPU seconds (in all,
and per GB for the transfer itself, without starting Python).  ``--methods`` picks the methods.
This is a script, not library code: it runs tools with ``subprocess`` directly.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RUNNER = os.path.join(HERE, "seed_runner.py")

sys.path.insert(0, os.path.dirname(HERE))

from bench.datasets import build_once, build_tree, claim, drop_caches, fresh_target, tree_bytes  # noqa: E402
from bench.machine import load, machine  # noqa: E402
from bench.seed_methods import SECRET, SOURCE, TARGET, AgentPair, tar_socat, tls_files  # noqa: E402
from testbed.agent import free_port  # noqa: E402


def run_orchagent(source: str, target: str, tls: dict[str, str] | None = None, compression: str = "auto") -> dict:
    port = free_port()
    env = {**os.environ, "ORCHAGENT_SEED_SECRET": SECRET}
    receive_tls = ["--tls-cert", tls["cert"], "--tls-key", tls["key"]] if tls else []
    send_tls = ["--tls-ca", tls["ca"]] if tls else []
    receiver = subprocess.Popen([sys.executable, RUNNER, "receive", "--port", str(port), "--datadir", target,
                                 *receive_tls], stdout=subprocess.PIPE, text=True, env=env)
    if receiver.stdout.readline().strip() != "listening":
        raise RuntimeError("the receiver did not start")
    start = time.monotonic()
    sender = subprocess.run([sys.executable, RUNNER, "send", "--port", str(port), "--source", source, *send_tls,
                             "--compression", compression],
                            stdout=subprocess.PIPE, text=True, env=env, check=True)
    received = receiver.communicate()[0]
    wall = time.monotonic() - start
    send, receive = json.loads(sender.stdout.strip().splitlines()[-1]), json.loads(received.strip().splitlines()[-1])
    if not (send["ok"] and receive["ok"]):
        raise RuntimeError(f"transfer failed: {send['error'] or receive['error']}")
    # "seconds": what a running agent sees, from the sender's authentication until the receiver
    # has everything fsynced and in place; "wall" adds starting the sender's Python process.
    return {"seconds": receive["seconds"], "wall": wall, "send": send, "receive": receive}


def run_cp(source: str, target: str) -> dict:
    os.rmdir(target)
    start = time.monotonic()
    subprocess.run(["cp", "-r", source, target], check=True)
    subprocess.run(["sync"], check=True)
    return {"seconds": time.monotonic() - start}


def identical(a: str, b: str) -> bool:
    return subprocess.run(["diff", "-r", "--no-dereference", a, b], capture_output=True).returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default="/var/tmp/orchagent-bench")
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--methods", default="orchagent,agents,tar_socat,cp",
                        help="comma-separated, run in this order each round")
    parser.add_argument("--keep-data", action="store_true", help="keep the source tree for the next run")
    args = parser.parse_args()
    pairs: list[AgentPair] = []
    try:
        run(args, pairs)
    finally:
        for pair in pairs:
            pair.stop()
        if not args.keep_data:
            os.chdir("/")
            shutil.rmtree(os.path.join(args.dir, f"source-{args.size_mb}mb"), ignore_errors=True)
            for name in (f"source-{args.size_mb}mb.built", ".lock"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(args.dir, name))
            with contextlib.suppress(OSError):
                os.rmdir(args.dir)  # only when nothing else is left in it


def run(args, pairs: list) -> None:

    claim(args.dir)
    os.chdir(args.dir)
    source, target = os.path.join(args.dir, f"source-{args.size_mb}mb"), os.path.join(args.dir, "target")
    build_once(source, lambda path: build_tree(path, args.size_mb))
    files, nbytes = tree_bytes(source)
    info = machine(args.dir)
    print(f"machine: {info['nproc']} cpus, {info['cpu']}, {info['memory']} RAM, {info['filesystem']}, "
          f"load {info['load']}")
    print(f"data: {files} files, {nbytes / 1e6:.0f} MB in {source}")
    runners = {"orchagent": run_orchagent, "tar_socat": tar_socat, "cp": run_cp,
               "orchagent_nocompress": functools.partial(run_orchagent, compression="none")}
    methods = args.methods.split(",")
    tls_dir = os.path.join(args.dir, f"tls-{os.getpid()}")
    if any(m.endswith("_tls") for m in methods):
        _, tls = tls_files(tls_dir)
        runners["orchagent_tls"] = functools.partial(run_orchagent, tls=tls)
        runners["tar_socat_tls"] = functools.partial(tar_socat, tls=tls)
    if "agents" in methods:
        os.makedirs(target, exist_ok=True)
        pairs.append(AgentPair(os.path.join(args.dir, f"agents-{os.getpid()}"), source, target))
        runners["agents"] = lambda source, target: pairs[0].seed()
        print(f"agents: source {SOURCE} (pid {pairs[0].source.process.pid}), target {TARGET} "
              f"(pid {pairs[0].target.process.pid}); RSS after start: "
              + ", ".join(f"{side} {mb} MB" for side, mb in pairs[0].started_rss_mb.items()))
    results: dict[str, list[dict]] = {m: [] for m in methods}
    dropped = True
    for round_ in range(args.repeat):
        for method in methods:
            fresh_target(target)
            dropped = drop_caches() and dropped
            result = runners[method](source, target)
            if method.startswith(("orchagent", "agents")) and round_ == 0 and not identical(source, target):
                raise RuntimeError(f"the {method} copy differs from the source")
            if method == "agents" and tree_bytes(target) != (files, nbytes):
                raise RuntimeError(f"the agents' copy holds {tree_bytes(target)} files and bytes, not {(files, nbytes)}")
            results[method].append(result)
            extra = ""
            if method in ("orchagent", "orchagent_tls", "orchagent_nocompress"):
                extra = f" (wall with process start {result['wall']:.2f} s)  " + "  ".join(
                    f"{side}: rss {result[side]['peak_rss_mb']} MB cpu {result[side]['cpu_seconds']:.2f} s "
                    f"({result[side]['transfer_cpu_seconds']:.2f} s transfer)" for side in ("send", "receive"))
                extra += f"  wire {result['send']['wire_bytes'] / max(result['send']['data_bytes'], 1):.0%} of the data"
            if method == "agents":
                extra = "  " + "  ".join(f"{side}: rss {result[side]['peak_rss_mb']} MB cpu "
                                         f"{result[side]['cpu_seconds']:.2f} s" for side in ("source", "target"))
            print(f"round {round_ + 1} {method:10s} {result['seconds']:6.2f} s "
                  f"{nbytes / 1e6 / result['seconds']:6.0f} MB/s{extra}  load {load()}", flush=True)
    shutil.rmtree(target, ignore_errors=True)
    shutil.rmtree(tls_dir, ignore_errors=True)
    print(f"page cache dropped before every run: {'yes' if dropped else 'no (not permitted)'}")
    median = {m: statistics.median(r["seconds"] for r in results[m]) for m in methods}
    for m in methods:
        print(f"median {m:10s} {median[m]:6.2f} s {nbytes / 1e6 / median[m]:6.0f} MB/s")
    if "cp" in median and "tar_socat" in median:
        print(f"cp / tar_socat: {median['tar_socat'] / median['cp']:.2f}x throughput (how far the disk allows "
              f"anything to beat tar | socat when source and target share it)")
    for m, baseline in (("orchagent", "tar_socat"), ("agents", "tar_socat"), ("orchagent_tls", "tar_socat_tls"),
                        ("orchagent", "orchagent_nocompress")):
        if m in median and baseline in median:
            rounds = [t["seconds"] / r["seconds"] for r, t in zip(results[m], results[baseline])]
            print(f"{m} / {baseline}: {median[baseline] / median[m]:.2f}x throughput; in each round: "
                  f"{' '.join(f'{ratio:.2f}x' for ratio in rounds)}")
    if "orchagent" in median:
        wall = statistics.median(r["wall"] for r in results["orchagent"])
        if "cp" in median:
            print(f"orchagent / cp: {median['cp'] / median['orchagent']:.2f}x throughput")
        counting_start = [f"{median[other] / wall:.2f}x {other}" for other in ("tar_socat", "cp") if other in median]
        if counting_start:
            print(f"orchagent counting the sender's process start: {', '.join(counting_start)}")
        for side in ("send", "receive"):
            peak = max(r[side]["peak_rss_mb"] for r in results["orchagent"])
            cpu = statistics.median(r[side]["transfer_cpu_seconds"] for r in results["orchagent"])
            print(f"peak RSS {side}: {peak} MB; transfer CPU {cpu / (nbytes / 1e9):.2f} s per GB (median)")
    if "agents" in median:
        for other in ("cp", "orchagent"):
            if other in median:
                print(f"agents / {other}: {median[other] / median['agents']:.2f}x throughput")
        pair = pairs[0]
        for side in ("source", "target"):
            peak = max(r[side]["peak_rss_mb"] for r in results["agents"])
            cpu = statistics.median(r[side]["cpu_seconds"] for r in results["agents"])
            print(f"agent {side}: peak RSS {peak} MB (after start {pair.started_rss_mb[side]} MB, peak "
                  f"{'reset every round' if pair.peak_reset else 'over the whole run: reset not permitted'}); "
                  f"CPU {cpu / (nbytes / 1e9):.2f} s per GB (median)")
    print(f"load average at the end: {load()}")


if __name__ == "__main__":
    main()
