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
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RUNNER = os.path.join(HERE, "seed_runner.py")
SECRET = "bench-secret"
POLL_SECONDS = 0.1
SOURCE_ADDRESS, TARGET_ADDRESS = "127.0.0.1", "127.0.0.2"

sys.path.insert(0, os.path.dirname(HERE))

from bench.datasets import build_tree, drop_caches, fresh_target, tree_bytes  # noqa: E402
from bench.machine import cpu_seconds, machine, peak_rss_mb, reset_peak_rss  # noqa: E402
from tests.support.agent import RunningAgent, free_port as free_port_on, start_agent  # noqa: E402
from tests.support.orchestrator import HostAgent, Orchestrator  # noqa: E402
from tests.support.pki import CertificateAuthority  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout
        if out.strip():
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on port {port}")


def tls_files(directory: str) -> dict[str, str]:
    """A CA and a receiver certificate for 127.0.0.1, as PEM files: what the TLS methods use."""
    ca = CertificateAuthority(directory)
    receiver = ca.issue("receiver")
    with open(receiver.cert) as cert, open(receiver.key) as key, open(os.path.join(directory, "both.pem"), "w") as both:
        both.write(cert.read() + key.read())  # socat wants certificate and key in one file
    return {"ca": ca.cert, "cert": receiver.cert, "key": receiver.key, "both": both.name}


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


def run_tar_socat(source: str, target: str, tls: dict[str, str] | None = None) -> dict:
    port = free_port()
    listen, connect = "TCP-LISTEN:$1,bind=127.0.0.1,reuseaddr", "TCP:127.0.0.1:$2"
    listen_args, connect_args = [], []  # "$3" of each side
    if tls:  # the same TLS checks as orchagent's: the receiver's certificate, verified by name
        listen, connect = "OPENSSL-LISTEN:$1,bind=127.0.0.1,reuseaddr,cert=$3,verify=0", \
            "OPENSSL:127.0.0.1:$2,cafile=$3,commonname=localhost"
        listen_args, connect_args = [tls["both"]], [tls["ca"]]
    receiver = subprocess.Popen(["bash", "-c", f'socat -u "{listen}" - | tar -x -C "$2"', "bench", str(port), target,
                                 *listen_args])
    wait_listening(port)
    start = time.monotonic()
    subprocess.run(["bash", "-c", f'tar -c -C "$1" . | socat -u - "{connect}"', "bench", source, str(port),
                    *connect_args], check=True)
    if receiver.wait() != 0:
        raise RuntimeError("tar | socat receiver failed")
    subprocess.run(["sync"], check=True)
    return {"seconds": time.monotonic() - start}


def run_cp(source: str, target: str) -> dict:
    os.rmdir(target)
    start = time.monotonic()
    subprocess.run(["cp", "-r", source, target], check=True)
    subprocess.run(["sync"], check=True)
    return {"seconds": time.monotonic() - start}


def agent_settings(agent_dir: str, datadir: str, seed_port: int) -> dict:
    """MySQL reads as stopped and no snapshot is mounted: the source sends its datadir itself."""
    snapshots, mount_point = os.path.join(agent_dir, "snapshots"), os.path.join(agent_dir, "mnt")
    os.makedirs(snapshots, exist_ok=True)
    os.makedirs(mount_point, exist_ok=True)
    return {"MySQLDatadirCommand": f"echo {datadir}", "MySQLServiceStatusCommand": "false",
            "SnapshotBackend": "btrfs", "BtrfsSnapshotDirectory": snapshots, "SnapshotMountPoint": mount_point,
            "SeedTransferSecret": SECRET, "SeedTransferPort": seed_port}


class AgentPair:
    """A source and a target agent, started once for the whole run; :meth:`seed` is one round."""

    def __init__(self, workdir: str, source: str, target: str):
        self.workdir = workdir
        self.seed_id = 0
        self.peak_reset = True
        seed_port = free_port_on(TARGET_ADDRESS)
        self.agents: list[RunningAgent] = []
        for address, datadir in ((SOURCE_ADDRESS, source), (TARGET_ADDRESS, target)):
            agent_dir = os.path.join(workdir, address)
            os.makedirs(agent_dir)
            self.agents.append(start_agent(agent_settings(agent_dir, datadir, seed_port), address=address,
                                           directory=agent_dir))
        self.source, self.target = self.agents
        self.orchestrator = Orchestrator()
        self.started_rss_mb = {side: self.rss_mb(agent) for side, agent in self.sides()}

    def sides(self):
        return (("source", self.source), ("target", self.target))

    @staticmethod
    def rss_mb(agent: RunningAgent) -> float:
        with open(f"/proc/{agent.process.pid}/status") as f:
            return round(next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024, 1)

    def call(self, agent: RunningAgent, command: str):
        call = self.orchestrator.command(HostAgent.of(agent), command)
        self.orchestrator.calls.clear()  # the client records every call; keep memory flat
        if call.status != 200:
            raise RuntimeError(f"{agent.address} {command}: {call.status} {call.error or call.body[:300]!r}")
        return call.json()

    def wait_completed(self, agent: RunningAgent, seed_id: int) -> None:
        while not self.call(agent, f"seed-command-completed/{seed_id}"):
            time.sleep(POLL_SECONDS)

    def seed(self, source: str, target: str) -> dict:
        self.seed_id += 1
        seed_id = self.seed_id
        self.call(self.target, "delete-mysql-datadir")  # what orchestrator does first (the target is empty)
        pids = {side: agent.process.pid for side, agent in self.sides()}
        for pid in pids.values():
            self.peak_reset = reset_peak_rss(pid) and self.peak_reset
        cpu_before = {side: cpu_seconds(pid) for side, pid in pids.items()}
        start = time.monotonic()
        self.call(self.target, f"receive-mysql-seed-data/{seed_id}")
        self.call(self.source, f"send-mysql-seed-data/{TARGET_ADDRESS}/{seed_id}")
        self.wait_completed(self.target, seed_id)
        subprocess.run(["sync"], check=True)
        seconds = time.monotonic() - start
        self.wait_completed(self.source, seed_id)  # its CPU is read once it is done too
        result = {"seconds": seconds}
        for side, agent in self.sides():
            if not self.call(agent, f"seed-command-succeeded/{seed_id}"):
                status = self.call(agent, f"seed-status/{seed_id}")
                raise RuntimeError(f"seed {seed_id} failed on the {side}: {status['Error']}")
            result[side] = {"peak_rss_mb": peak_rss_mb(pids[side]),
                            "cpu_seconds": round(cpu_seconds(pids[side]) - cpu_before[side], 2)}
        return result

    def stop(self) -> None:
        for agent in self.agents:
            agent.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


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
            with contextlib.suppress(OSError):
                os.rmdir(args.dir)  # only when nothing else is left in it


def run(args, pairs: list) -> None:

    os.makedirs(args.dir, exist_ok=True)
    os.chdir(args.dir)
    source, target = os.path.join(args.dir, f"source-{args.size_mb}mb"), os.path.join(args.dir, "target")
    build_tree(source, args.size_mb)
    files, nbytes = tree_bytes(source)
    info = machine()
    print(f"machine: {info['nproc']} cpus, {info['cpu']}, {info['memory_gb']} GB RAM, {info['filesystem']}, "
          f"load {' '.join(info['loadavg'])}")
    print(f"data: {files} files, {nbytes / 1e6:.0f} MB in {source}")
    runners = {"orchagent": run_orchagent, "tar_socat": run_tar_socat, "cp": run_cp,
               "orchagent_nocompress": functools.partial(run_orchagent, compression="none")}
    methods = args.methods.split(",")
    tls_dir = os.path.join(args.dir, f"tls-{os.getpid()}")
    if any(m.endswith("_tls") for m in methods):
        tls = tls_files(tls_dir)
        runners["orchagent_tls"] = functools.partial(run_orchagent, tls=tls)
        runners["tar_socat_tls"] = functools.partial(run_tar_socat, tls=tls)
    if "agents" in methods:
        os.makedirs(target, exist_ok=True)
        pairs.append(AgentPair(os.path.join(args.dir, f"agents-{os.getpid()}"), source, target))
        runners["agents"] = pairs[0].seed
        print(f"agents: source {SOURCE_ADDRESS} (pid {pairs[0].source.process.pid}), target {TARGET_ADDRESS} "
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
            load = " ".join(open("/proc/loadavg").read().split()[:3])
            print(f"round {round_ + 1} {method:10s} {result['seconds']:6.2f} s "
                  f"{nbytes / 1e6 / result['seconds']:6.0f} MB/s{extra}  load {load}", flush=True)
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
    print(f"load average at the end: {' '.join(open('/proc/loadavg').read().split()[:3])}")


if __name__ == "__main__":
    main()
