"""Data sets for the benchmarks: a datadir-like tree, a sysbench-prepared InnoDB datadir, and the
page-cache and target handling every round needs.  Scripts, not library code: tools run through
``subprocess`` directly.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from testbed.mariadb import MariaDBSandbox  # noqa: E402

COMPLETE = ".complete"  # marks a data set whose build finished


def build_tree(root: str, size_mb: int) -> None:
    """80% of the bytes in four large files, the rest in small files spread over 50 schemas."""
    marker = os.path.join(root, COMPLETE)
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


def build_sysbench_datadir(directory: str, tables: int, rows: int) -> str:
    """A MariaDB datadir holding sysbench's ``sbtest`` tables, prepared by ``sysbench oltp_read_write``
    against a throw-away server, which is then shut down cleanly.  Built once: returns the datadir."""
    datadir = os.path.join(directory, "data")
    if os.path.exists(os.path.join(directory, COMPLETE)):
        return datadir
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
    open(os.path.join(directory, COMPLETE), "w").close()
    return datadir
