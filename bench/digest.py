"""CPU cost of the seed stream's digests: plain SHA-256 (protocol v1) against the keyed ones.

Usage: ./run-bench digest [--megabytes 512] [--files 20000] [--repeat 3]

Two loads, each hashed the way the seed engine hashes it, all in memory (no disk, no network),
timed in CPU seconds of the hashing thread (``time.thread_time``), best of ``--repeat``:

* large: 1 MiB reads, each preceded by its 13-byte DATA header (one file of ``--megabytes``);
* small: ``--files`` files of 4 KiB, each with an ENTRY frame of about 100 bytes and its
  per-file work (v1: a new SHA-256 per file; v2: the running MAC's per-file tag, a copy).

The ratio column compares with plain SHA-256 measured in the same run.  A last check runs two
threads hashing at once: if the digest released the GIL, their wall time stays near one's.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import sys
import threading
import time
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.machine import machine  # noqa: E402

KEY = os.urandom(32)
HEADER = os.urandom(13)
ENTRY = os.urandom(100)
CHUNK = os.urandom(1024 * 1024)
SMALL = os.urandom(4096)


def _sha256() -> object:
    return hashlib.sha256()


def _hmac_sha256() -> object:
    return hmac.new(KEY, digestmod="sha256")


def _blake2b() -> object:
    return hashlib.blake2b(key=KEY, digest_size=32)


DIGESTS: dict[str, Callable[[], object]] = {
    "sha256 (v1, plain)": _sha256,
    "hmac-sha256 (keyed)": _hmac_sha256,
    "blake2b (keyed)": _blake2b,
}


def large(new: Callable[[], object], megabytes: int) -> None:
    digest = new()
    for _ in range(megabytes):
        digest.update(HEADER)
        digest.update(CHUNK)
    digest.digest()


def small(new: Callable[[], object], files: int, running: bool) -> None:
    """v1 (``running`` false): a digest per file; v2: one running MAC, a tag per file."""
    stream = new()
    for _ in range(files):
        digest = stream if running else new()
        digest.update(ENTRY)
        digest.update(HEADER)
        digest.update(SMALL)
        (digest.copy() if running else digest).digest()


def cpu_seconds(work: Callable[[], None], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.thread_time()
        work()
        best = min(best, time.thread_time() - started)
    return best


def two_threads(new: Callable[[], object], megabytes: int) -> float:
    """Wall seconds for two threads hashing ``megabytes`` each, divided by one thread's."""
    started = time.perf_counter()
    large(new, megabytes)
    one = time.perf_counter() - started
    threads = [threading.Thread(target=large, args=(new, megabytes)) for _ in range(2)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return (time.perf_counter() - started) / one


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=512)
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with open("/proc/cpuinfo") as f:
        sha_ni = " sha_ni " in f.read()
    facts = machine()
    print(f"{facts['date']}, {facts['cpu']}, {'SHA-NI' if sha_ni else 'no SHA-NI'}, {facts['nproc']} CPUs, "
          f"load {facts['load']}, Python {facts['python']}, {hashlib.sha256().name} from OpenSSL")
    gigabytes = args.megabytes / 1024
    base_large = base_small = None
    print(f"{'digest':22} {'large: CPU-s/GB':>16} {'ratio':>6} {'small: us/file':>15} {'ratio':>6} {'2 threads':>10}")
    for name, new in DIGESTS.items():
        per_gb = cpu_seconds(lambda: large(new, args.megabytes), args.repeat) / gigabytes
        running = new is not _sha256
        per_file = cpu_seconds(lambda: small(new, args.files, running), args.repeat) / args.files * 1e6
        base_large = base_large or per_gb
        base_small = base_small or per_file
        parallel = two_threads(new, min(args.megabytes, 256))
        print(f"{name:22} {per_gb:16.3f} {per_gb / base_large:6.3f} {per_file:15.2f} "
              f"{per_file / base_small:6.3f} {parallel:9.2f}x")


if __name__ == "__main__":
    main()
