"""Benchmark: seeds over a shaped link, orchagent against the pipelines DBAs build by hand.

    sudo ./run-bench seed_network [--links 100mbit,1gbit,10gbit] [--datasets sysbench,tree]
                                  [--methods ...] [--repeat 1] [--record] [--keep-data]

Both ends run inside a private network namespace whose loopback is shaped with ``tbf`` to the
link's rate (``tests/support/netns.py``): the source on 127.0.0.1, the target on 127.0.0.2, so
every byte crosses the link, and nothing leaves the namespace.  Data sets: (1) a MariaDB datadir
prepared by ``sysbench oltp_read_write`` (real InnoDB pages, which compress about 3x with
``zstd -1``), (2) the half-random datadir-like tree of ``seed_transfer`` (incompressible).
Methods, in the same run, page cache dropped before each:

* ``orchagent``: two real agents (``twistd orchagent``), seeded through the API as orchestrator
  does (receive, send, poll ``seed-command-completed``), every byte verified; ``orchagent_tls``
  the same with ``UseSSL`` and certificates from a throw-away CA; ``orchagent_nocompress`` with
  ``SeedCompression`` ``none``;
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
import functools
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from bench.datasets import build_sysbench_datadir, build_tree, drop_caches, fresh_target, tree_bytes  # noqa: E402
from bench.machine import machine, peak_rss_mb, reset_peak_rss  # noqa: E402
from tests.support.agent import REPO, free_port, start_agent  # noqa: E402
from tests.support.netns import NetworkNamespace  # noqa: E402
from tests.support.orchestrator import HostAgent, Orchestrator  # noqa: E402
from tests.support.pki import CertificateAuthority  # noqa: E402

SOURCE, TARGET = "127.0.0.1", "127.0.0.2"
SECRET = "bench-network-secret"
POLL_SECONDS = 0.1
LINK_BITS = {"100mbit": 100e6, "1gbit": 1e9, "10gbit": 10e9}
METHODS = "orchagent,orchagent_nocompress,orchagent_tls,tar_socat,tar_zstd_socat,tar_socat_tls"
AGENT_METHODS = {"orchagent": {}, "orchagent_nocompress": {"SeedCompression": "none"}, "orchagent_tls": {}}


class AgentPair:
    """A source and a target agent inside the namespace; :meth:`seed` is one round."""

    def __init__(self, net: NetworkNamespace, workdir: str, source: str, target: str, tls: CertificateAuthority | None,
                 extra: dict):
        self.net = net
        self.seed_id = 0
        seed_port = net.call(free_port, TARGET)
        self.agents = []
        for address, datadir in ((SOURCE, source), (TARGET, target)):
            directory = os.path.join(workdir, address)
            os.makedirs(os.path.join(directory, "snapshots"))
            os.makedirs(os.path.join(directory, "mnt"))
            settings = {"MySQLDatadirCommand": f"echo {datadir}", "MySQLServiceStatusCommand": "false",
                        "SnapshotBackend": "btrfs", "BtrfsSnapshotDirectory": os.path.join(directory, "snapshots"),
                        "SnapshotMountPoint": os.path.join(directory, "mnt"),
                        "SeedTransferSecret": SECRET, "SeedTransferPort": seed_port, **extra}
            if tls is not None:
                issued = tls.issue(address, ips=(address,))
                settings.update(UseSSL=True, SSLCertFile=issued.cert, SSLPrivateKeyFile=issued.key, SSLCAFile=tls.cert)
            self.agents.append(start_agent(settings, address=address, directory=directory, namespace=net))
        self.hosts = [HostAgent.of(agent) for agent in self.agents]
        self.orchestrator = Orchestrator(ca_file=tls.cert if tls else None)

    def call(self, host: HostAgent, command: str):
        call = self.orchestrator.command(host, command)
        self.orchestrator.calls.clear()
        if call.status != 200:
            raise RuntimeError(f"{host.hostname} {command}: {call.status} {call.error or call.body[:300]!r}")
        return call.json()

    def seed(self) -> dict:
        self.seed_id += 1
        source, target = self.hosts
        for agent in self.agents:
            reset_peak_rss(agent.process.pid)
        started = time.monotonic()
        self.call(target, f"receive-mysql-seed-data/{self.seed_id}")
        self.call(source, f"send-mysql-seed-data/{TARGET}/{self.seed_id}")
        while not self.call(target, f"seed-command-completed/{self.seed_id}"):
            time.sleep(POLL_SECONDS)
        subprocess.run(["sync"], check=True)
        seconds = time.monotonic() - started
        for host in self.hosts:
            if not self.call(host, f"seed-command-succeeded/{self.seed_id}"):
                raise RuntimeError(f"seed failed on {host.hostname}: {self.call(host, f'seed-status/{self.seed_id}')}")
        ratio = self.call(target, f"seed-status/{self.seed_id}")["CompressionRatio"]
        return {"seconds": seconds, "rss_mb": [peak_rss_mb(agent.process.pid) for agent in self.agents], "ratio": ratio}

    def stop(self) -> None:
        for agent in self.agents:
            agent.stop()


def pipeline(net: NetworkNamespace, source: str, target: str, *, zstd: bool = False, tls: dict | None = None) -> dict:
    """``tar | [zstd |] socat`` to ``socat | [zstd -d |] tar -x`` over the link."""
    port = net.call(free_port, TARGET)
    listen, connect = f"TCP-LISTEN:{port},bind={TARGET},reuseaddr", f"TCP:{TARGET}:{port}"
    if tls:
        listen = f"OPENSSL-LISTEN:{port},bind={TARGET},reuseaddr,cert={tls['both']},verify=0"
        connect = f"OPENSSL:{TARGET}:{port},cafile={tls['ca']},commonname=localhost"
    compress, decompress = (" | zstd -1 -T0 -q", "zstd -d -q | ") if zstd else ("", "")
    receiver = net.popen(["bash", "-c", f'socat -u "$1" - | {decompress}tar -x -C "$2"', "bench", listen, target])
    deadline = time.monotonic() + 10
    while not net.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout.strip():
        if time.monotonic() > deadline:
            raise RuntimeError("the receiving socat did not listen")
        time.sleep(0.02)
    started = time.monotonic()
    net.run(["bash", "-c", f'tar -c -C "$1" .{compress} | socat -u - "$2"', "bench", source, connect], check=True)
    if receiver.wait() != 0:
        raise RuntimeError("the receiving pipeline failed")
    subprocess.run(["sync"], check=True)
    return {"seconds": time.monotonic() - started}


def tls_files(directory: str) -> tuple[CertificateAuthority, dict]:
    ca = CertificateAuthority(directory)
    receiver = ca.issue("receiver")
    both = os.path.join(directory, "both.pem")
    with open(receiver.cert) as cert, open(receiver.key) as key, open(both, "w") as f:
        f.write(cert.read() + key.read())  # socat wants certificate and key in one file
    return ca, {"ca": ca.cert, "both": both}


def measure(args, net: NetworkNamespace, link: str, source: str, target: str, ca, socat_tls) -> dict[str, list]:
    workdir = os.path.join(args.dir, f"agents-{os.getpid()}")
    pairs: dict[str, AgentPair] = {}
    results: dict[str, list] = {m: [] for m in args.methods}
    try:
        for method, extra in AGENT_METHODS.items():
            if method in args.methods:
                pairs[method] = AgentPair(net, os.path.join(workdir, method), source, target,
                                          ca if method.endswith("_tls") else None, extra)
        runners = {
            **{method: functools.partial(net.call, pair.seed) for method, pair in pairs.items()},
            "tar_socat": lambda: pipeline(net, source, target),
            "tar_zstd_socat": lambda: pipeline(net, source, target, zstd=True),
            "tar_socat_tls": lambda: pipeline(net, source, target, tls=socat_tls),
        }
        for round_ in range(args.repeat):
            for method in args.methods:
                fresh_target(target)
                drop_caches()
                result = runners[method]()
                results[method].append(result)
                rss = f"  rss {result['rss_mb']} MB, compression {result['ratio']}x" if "rss_mb" in result else ""
                print(f"  {link} round {round_ + 1} {method:15s} {result['seconds']:7.2f} s{rss}", flush=True)
    finally:
        for pair in pairs.values():
            pair.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def report(link: str, dataset: str, nbytes: int, results: dict[str, list]) -> list[str]:
    link_mb = LINK_BITS.get(link, 0) / 8 / 1e6
    median = {m: statistics.median(r["seconds"] for r in rs) for m, rs in results.items() if rs}
    lines = [f"{link}, {dataset} ({nbytes / 1e6:.0f} MB):"]
    for method, seconds in median.items():
        rate = nbytes / 1e6 / seconds
        share = f", {rate / link_mb:.0%} of the link" if link_mb else ""
        rss = [r["rss_mb"] for r in results[method] if "rss_mb" in r]
        peak = f", peak RSS {max(x for pair in rss for x in pair)} MB" if rss else ""
        lines.append(f"  {method:15s} {seconds:7.2f} s {rate:7.1f} MB/s{share}{peak}")
    for ours, baseline in (("orchagent", "tar_socat"), ("orchagent", "tar_zstd_socat"),
                           ("tar_zstd_socat", "tar_socat"), ("orchagent_tls", "tar_socat_tls"),
                           ("orchagent", "orchagent_nocompress"), ("orchagent_nocompress", "tar_socat")):
        if ours in median and baseline in median:
            lines.append(f"  {ours} / {baseline}: {median[baseline] / median[ours]:.2f}x")
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
    parser.add_argument("--record", action="store_true", help="append the figures to bench/RESULTS.md")
    parser.add_argument("--keep-data", action="store_true", help="keep the data sets for the next run")
    args = parser.parse_args()
    args.methods = args.methods.split(",")
    if os.geteuid() != 0:
        raise SystemExit("seed_network needs root: network namespaces, tc and dropping the page cache")
    os.makedirs(args.dir, exist_ok=True)
    info = machine()
    lines = [f"## Seeds over a shaped link ({time.strftime('%Y-%m-%d')})", "",
             f"Machine: {info['nproc']} cpus, {info['cpu']}, {info['memory_gb']} GB RAM, {info['filesystem']}; "
             f"load at the start {' '.join(info['loadavg'])}. Command: `./run-bench seed_network "
             f"{' '.join(sys.argv[1:])}`.", "", "```"]
    datasets = {}
    if "sysbench" in args.datasets:
        print("building (or reusing) the sysbench datadir ...", flush=True)
        datasets["sysbench"] = build_sysbench_datadir(os.path.join(args.dir, "sysbench"), args.sysbench_tables,
                                                      args.sysbench_rows)
    if "tree" in args.datasets:
        print("building (or reusing) the tree ...", flush=True)
        datasets["tree"] = os.path.join(args.dir, f"tree-{args.tree_mb}mb")
        build_tree(datasets["tree"], args.tree_mb)
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
        with open(os.path.join(REPO, "bench", "RESULTS.md"), "a") as f:
            f.write("\n" + "\n".join(lines) + "\n")
        print("recorded in bench/RESULTS.md")


if __name__ == "__main__":
    main()
