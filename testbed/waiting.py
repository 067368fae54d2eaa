"""Waiting on other processes from a blocking test or benchmark: is a pid alive, has a condition come true."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def alive(pid: int) -> bool:
    """Whether pid is a live process (a zombie is not: PID 1 here may never reap orphans)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[0] not in (b"Z", b"X")
    except FileNotFoundError:
        return False


def wait_for(condition: Callable[[], T], timeout: float = 30, interval: float = 0.05,
             what: str = "condition") -> T:
    """The first true value of ``condition()``, asked every ``interval`` s; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
