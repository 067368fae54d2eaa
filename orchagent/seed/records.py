"""Seed records and their store under ``StateDirectory``, so answers survive a restart.

One JSON file per seed (``seeds/<id>.json``), replaced atomically (write, fsync, rename).
A seed that was running when the agent stopped can only be reported as failed afterwards:
nothing is left that could finish it.

Beside them, ``datadirs.json`` says which seed's data each datadir holds (:class:`Holder`), so a
late cleanup of one seed never removes another's data, and ``post-copy`` asks about the seed that
is actually there.
"""

from __future__ import annotations

import json
import os

import attrs

RUNNING, SUCCEEDED, FAILED, ABORTED = "running", "succeeded", "failed", "aborted"
PARTIAL, COMPLETE, EMPTIED = "partial", "complete", "emptied"


@attrs.define
class SeedRecord:
    seed_id: int
    role: str  # "receive" (this host is the target) or "send" (the source)
    mode: str  # "built-in" or "command"
    peer: str  # the target host when sending; "" when receiving
    path: str  # the datadir receiving, or the directory being sent
    started_at: float
    state: str = RUNNING
    bytes_done: int = 0
    bytes_total: int | None = None
    files_done: int = 0
    files_total: int | None = None
    wire_bytes: int = 0  # built-in transfer: the data stream's bytes on the wire
    data_bytes: int = 0  # and what they carry uncompressed
    resumes: int = 0  # built-in transfer: connections that took over after a dropped one
    resent_bytes: int = 0  # and the file bytes they had to move again
    streams: int | None = None  # built-in transfer: the connections (lanes) it runs over, once known
    error: str = ""
    ended_at: float | None = None
    data_started_at: float | None = None  # when the first bytes were seen (the sender may come later)
    # A hot seed's receive: where the copy stands in the source's binary log (the backup's binlog info)
    # and the source's MySQL port, both sent with the stream; the source host from post-copy's sourceHost.
    source_host: str = ""
    source_port: int | None = None
    binlog_file: str = ""
    binlog_position: int | None = None
    gtid: str = ""
    replication: str = ""  # what mysql-start configured after this seed (SeedStartReplication), or why not
    max_bytes_per_second: int | None = None  # a built-in send's pacing (0: none); None: not paced here

    @property
    def has_coordinates(self) -> bool:
        """Whether the copy stands at a known binlog position (a hot seed), unlike a snapshot's."""
        return self.source_port is not None and bool(self.gtid or self.binlog_file)

    @property
    def completed(self) -> bool:
        return self.state != RUNNING

    @property
    def succeeded(self) -> bool:
        return self.state == SUCCEEDED

    def rate(self, now: float) -> int:
        """Bytes per second from the first byte to ``now`` (to the end, once the seed ended)."""
        elapsed = (self.ended_at or now) - (self.data_started_at or self.started_at)
        return int(self.bytes_done / elapsed) if elapsed > 0 else 0

    @property
    def compression_ratio(self) -> float | None:
        """Data bytes per wire byte (1.0: nothing saved); None before the first byte."""
        return round(self.data_bytes / self.wire_bytes, 2) if self.wire_bytes else None

    def eta(self, now: float) -> int | None:
        """Seconds left at the current rate; None when unknown or ended."""
        rate = self.rate(now)
        if self.completed or not rate or self.bytes_total is None:
            return None
        return max(self.bytes_total - self.bytes_done, 0) // rate

    def end(self, state: str, error: str, now: float) -> None:
        self.state = state
        self.error = error
        self.ended_at = now


@attrs.frozen
class Holder:
    """The last seed received into a datadir, and what of it is there."""

    seed_id: int
    data: str  # PARTIAL (it may have written some), COMPLETE (it arrived whole) or EMPTIED (removed again)


class SeedStore:
    """Blocking file I/O: call from a thread, except :meth:`load_all` at start-up."""

    def __init__(self, state_directory: str):
        self.directory = os.path.join(state_directory, "seeds")
        self.holders_path = os.path.join(state_directory, "datadirs.json")

    def load_all(self) -> dict[int, SeedRecord]:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        records = {}
        for name in os.listdir(self.directory):
            if not name.endswith(".json"):
                continue
            with open(os.path.join(self.directory, name)) as f:
                record = SeedRecord(**json.load(f))
            records[record.seed_id] = record
        return records

    def save(self, record: SeedRecord) -> None:
        _write_json(os.path.join(self.directory, f"{record.seed_id}.json"), attrs.asdict(record))

    def load_holders(self) -> dict[str, Holder] | None:
        """The datadirs' holders, by datadir path; None before the file was ever written."""
        try:
            with open(self.holders_path) as f:
                return {datadir: Holder(**holder) for datadir, holder in json.load(f).items()}
        except FileNotFoundError:
            return None

    def save_holders(self, holders: dict[str, Holder]) -> None:
        _write_json(self.holders_path, {datadir: attrs.asdict(holder) for datadir, holder in holders.items()})


def _write_json(path: str, value) -> None:
    temporary = path + ".tmp"
    with open(temporary, "w") as f:
        json.dump(value, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
