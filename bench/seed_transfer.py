"""Benchmark: the built-in seed transfer against ``tar | socat`` and a local ``cp -r`` + ``sync``.

    sudo python3 bench/seed_transfer.py [--dir /var/tmp/orchagent-bench] [--size-mb 1024] [--repeat 3]

Builds (or reuses) a datadir-like tree under ``--dir`` on the real disk (a few large files,
thousands of small ones, incompressible data), then, in the same run on the same data and
interleaved so that background noise hits every method alike:

(a) orchagent: receiver and sender each in its own process (``bench/seed_runner.py``), over
    127.0.0.1, verification on; the time runs from starting the sender until both processes have
    exited, i.e. after the receiver fsynced everything and moved it into place;
(b) ``socat -u TCP-LISTEN | tar -x`` receiving from ``tar -c | socat -u - TCP:``, then ``sync``;
(c) ``cp -r`` + ``sync``: what the disk allows.

Before every run the target is removed, ``sync`` ran and the page cache is dropped when this
process may write ``/proc/sys/vm/drop_caches`` (the output says whether it could).  Prints the
median throughput of each method, both ratios, and each side's peak RSS and CPU seconds (in all,
and per GB for the transfer itself, without starting Python).
This is a script, not library code: it runs tools with ``subprocess`` directly.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RUNNER = os.path.join(HERE, "seed_runner.py")
SECRET = "bench-secret"


def build_tree(root: str, size_mb: int) -> None:
    """80% of the bytes in four large files, the rest in small files spread over 50 schemas."""
    marker = os.path.join(root, ".complete")
    if os.path.exists(marker):
        return
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    rng = random.Random(42)
    block = os.urandom(1 << 20)
    large_mb = size_mb * 8 // 10 // 4
    for name in ("ibdata1", "ib_logfile0", "ib_logfile1", "undo001"):
        with open(os.path.join(root, name), "wb") as f:
            for j in range(large_mb):
                cut = rng.randrange(len(block))
                f.write(block[cut:] + block[:cut])
    small_budget = (size_mb - 4 * large_mb) << 20
    n = 0
    while small_budget > 0:
        schema = os.path.join(root, f"schema{n % 50}")
        os.makedirs(schema, exist_ok=True)
        size = min(small_budget, rng.randint(1000, 80000))
        cut = rng.randrange(len(block) - size)
        with open(os.path.join(schema, f"table{n}.ibd"), "wb") as f:
            f.write(block[cut:cut + size])
        small_budget -= size
        n += 1
    os.makedirs(os.path.join(root, "empty_schema"))
    subprocess.run(["sync"], check=True)
    open(marker, "w").close()


def tree_bytes(root: str) -> tuple[int, int]:
    files = nbytes = 0
    for directory, _, names in os.walk(root):
        for name in names:
            files += 1
            nbytes += os.lstat(os.path.join(directory, name)).st_size
    return files, nbytes


def drop_caches() -> bool:
    subprocess.run(["sync"], check=True)
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def fresh_target(target: str) -> None:
    shutil.rmtree(target, ignore_errors=True)
    os.makedirs(target)


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


def run_orchagent(source: str, target: str) -> dict:
    port = free_port()
    env = {**os.environ, "ORCHAGENT_SEED_SECRET": SECRET}
    receiver = subprocess.Popen([sys.executable, RUNNER, "receive", "--port", str(port), "--datadir", target],
                                stdout=subprocess.PIPE, text=True, env=env)
    if receiver.stdout.readline().strip() != "listening":
        raise RuntimeError("the receiver did not start")
    start = time.monotonic()
    sender = subprocess.run([sys.executable, RUNNER, "send", "--port", str(port), "--source", source],
                            stdout=subprocess.PIPE, text=True, env=env, check=True)
    received = receiver.communicate()[0]
    wall = time.monotonic() - start
    send, receive = json.loads(sender.stdout.strip().splitlines()[-1]), json.loads(received.strip().splitlines()[-1])
    if not (send["ok"] and receive["ok"]):
        raise RuntimeError(f"transfer failed: {send['error'] or receive['error']}")
    # "seconds": what a running agent sees, from the sender's authentication until the receiver
    # has everything fsynced and in place; "wall" adds starting the sender's Python process.
    return {"seconds": receive["seconds"], "wall": wall, "send": send, "receive": receive}


def run_tar_socat(source: str, target: str) -> dict:
    port = free_port()
    receiver = subprocess.Popen(
        ["bash", "-c", 'socat -u TCP-LISTEN:"$1",bind=127.0.0.1,reuseaddr - | tar -x -C "$2"', "bench",
         str(port), target])
    wait_listening(port)
    start = time.monotonic()
    subprocess.run(["bash", "-c", 'tar -c -C "$1" . | socat -u - TCP:127.0.0.1:"$2"', "bench", source, str(port)],
                   check=True)
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


def identical(a: str, b: str) -> bool:
    return subprocess.run(["diff", "-r", "--no-dereference", a, b], capture_output=True).returncode == 0


def machine() -> dict:
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    df = subprocess.run(["df", "-h", "--output=source,fstype,size", "."], capture_output=True, text=True).stdout
    return {"nproc": os.cpu_count(), "cpu": model, "memory_gb": round(mem_kb / 1024 / 1024, 1),
            "filesystem": " ".join(df.splitlines()[-1].split()), "loadavg": open("/proc/loadavg").read().split()[:3]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default="/var/tmp/orchagent-bench")
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--methods", default="orchagent,tar_socat,cp")
    args = parser.parse_args()

    os.makedirs(args.dir, exist_ok=True)
    os.chdir(args.dir)
    source, target = os.path.join(args.dir, f"source-{args.size_mb}mb"), os.path.join(args.dir, "target")
    build_tree(source, args.size_mb)
    files, nbytes = tree_bytes(source)
    info = machine()
    print(f"machine: {info['nproc']} cpus, {info['cpu']}, {info['memory_gb']} GB RAM, {info['filesystem']}, "
          f"load {' '.join(info['loadavg'])}")
    print(f"data: {files} files, {nbytes / 1e6:.0f} MB in {source}")
    runners = {"orchagent": run_orchagent, "tar_socat": run_tar_socat, "cp": run_cp}
    methods = args.methods.split(",")
    results: dict[str, list[dict]] = {m: [] for m in methods}
    dropped = True
    for round_ in range(args.repeat):
        for method in methods:
            fresh_target(target)
            dropped = drop_caches() and dropped
            result = runners[method](source, target)
            if method == "orchagent" and round_ == 0 and not identical(source, target):
                raise RuntimeError("the orchagent copy differs from the source")
            results[method].append(result)
            extra = ""
            if method == "orchagent":
                extra = f" (wall with process start {result['wall']:.2f} s)  " + "  ".join(
                    f"{side}: rss {result[side]['peak_rss_mb']} MB cpu {result[side]['cpu_seconds']:.2f} s "
                    f"({result[side]['transfer_cpu_seconds']:.2f} s transfer)" for side in ("send", "receive"))
            load = " ".join(open("/proc/loadavg").read().split()[:3])
            print(f"round {round_ + 1} {method:10s} {result['seconds']:6.2f} s "
                  f"{nbytes / 1e6 / result['seconds']:6.0f} MB/s{extra}  load {load}", flush=True)
    shutil.rmtree(target, ignore_errors=True)
    print(f"page cache dropped before every run: {'yes' if dropped else 'no (not permitted)'}")
    median = {m: statistics.median(r["seconds"] for r in results[m]) for m in methods}
    for m in methods:
        print(f"median {m:10s} {median[m]:6.2f} s {nbytes / 1e6 / median[m]:6.0f} MB/s")
    if "orchagent" in median:
        wall = statistics.median(r["wall"] for r in results["orchagent"])
        for other in ("tar_socat", "cp"):
            if other in median:
                print(f"orchagent / {other}: {median[other] / median['orchagent']:.2f}x throughput "
                      f"({median[other] / wall:.2f}x counting the sender's process start)")
        for side in ("send", "receive"):
            peak = max(r[side]["peak_rss_mb"] for r in results["orchagent"])
            cpu = statistics.median(r[side]["transfer_cpu_seconds"] for r in results["orchagent"])
            print(f"peak RSS {side}: {peak} MB; transfer CPU {cpu / (nbytes / 1e9):.2f} s per GB (median)")
    print(f"load average at the end: {' '.join(open('/proc/loadavg').read().split()[:3])}")


if __name__ == "__main__":
    main()
