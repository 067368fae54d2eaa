"""Data sets for the benchmarks, each built once and reused while unchanged: a datadir-like tree
for seeds, one with a single big table, a sysbench-prepared InnoDB datadir, a datadir of 100k small files and a MariaDB error
log for the status poll; and the page-cache and target handling every round needs.  Scripts, not
library code: tools run through ``subprocess`` directly.
"""

from __future__ import annotations

import fcntl
import os
import random
import shutil
import subprocess
import time
from typing import Callable

from testbed.mariadb import MariaDBSandbox

SCHEMAS = 1000
TABLES_PER_SCHEMA = 50  # a .frm and an .ibd each: 100 files per schema directory
LARGE_FILES = {"ibdata1": 96 << 20, "ib_logfile0": 48 << 20, "aria_log.00000001": 8 << 20, "ib_buffer_pool": 1 << 20}
LOG_BLOCK_BYTES = 1 << 20


def claim(directory: str) -> None:
    """Make ``directory`` and hold it for this run, or exit saying who holds it.

    Two runs sharing a directory share its ``target``: one's reset of it lands in the middle of
    the other's seed, which then fails for no fault of the agents.  The lock goes with the process.
    """
    os.makedirs(directory, exist_ok=True)
    fd = os.open(os.path.join(directory, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode().strip() or "?"
        raise SystemExit(f"another benchmark (pid {holder}) uses {directory}: wait for it, or give this "
                         "run its own --dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, b"%d\n" % os.getpid(), 0)


def build_once(path: str, build: Callable[[str], None]) -> tuple[float, bool]:
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


def build_tree(root: str, size_mb: int) -> None:
    """80% of the bytes in four large files, the rest in small files spread over 50 schemas (incompressible)."""
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


def build_big_file(root: str, size_mb: int) -> None:
    """One table holding nearly all the bytes (each MB half random, half text: about 2x with ``zstd -1``)
    and a few small files: what a datadir with one big table looks like to a seed's streams."""
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(os.path.join(root, "db"))
    text = b"".join(b"row %08d: some column text, ok\n" % i for i in range(16384))[:1 << 19]
    with open(os.path.join(root, "db", "big.ibd"), "wb") as f:
        for _ in range(size_mb):
            f.write(os.urandom(1 << 19) + text)
    for i in range(20):
        with open(os.path.join(root, "db", f"t{i}.ibd"), "wb") as f:
            f.write(os.urandom(65536))
    subprocess.run(["sync"], check=True)


def tree_bytes(root: str) -> tuple[int, int]:
    files = nbytes = 0
    for directory, _, names in os.walk(root):
        for name in names:
            files += 1
            nbytes += os.lstat(os.path.join(directory, name)).st_size
    return files, nbytes


def sysbench_datadir(directory: str, tables: int, rows: int) -> str:
    """Builds, once, a MariaDB datadir holding sysbench's ``sbtest`` tables, prepared by ``sysbench
    oltp_read_write`` against a throw-away server that is then shut down cleanly; the datadir."""
    build_once(directory, lambda path: _build_sysbench(path, tables, rows))
    return os.path.join(directory, "data")


def _build_sysbench(directory: str, tables: int, rows: int) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    sandbox = MariaDBSandbox(directory, extra_options={
        "innodb_buffer_pool_size": "256M", "innodb_log_file_size": "96M", "innodb_flush_log_at_trx_commit": "2"})
    sandbox.start()
    try:
        sandbox.sql("CREATE DATABASE sbtest")
        subprocess.run(["sysbench", "oltp_read_write", "--db-driver=mysql", f"--mysql-socket={sandbox.socket}",
                        "--mysql-user=root", f"--tables={tables}", f"--table-size={rows}", "--threads=2",
                        "prepare"], check=True, stdout=subprocess.DEVNULL)
    finally:
        sandbox.stop()
    subprocess.run(["sync"], check=True)


def build_small_files_datadir(root: str) -> None:
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


def drop_caches() -> bool:
    """Write back, then drop the whole page cache (root only); whether it could."""
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
