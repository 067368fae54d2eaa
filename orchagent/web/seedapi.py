"""Handlers for seeding (contract A.2 #24-28, B.2): answer at once, the work goes on in the background."""

from __future__ import annotations

import datetime

from orchagent.interfaces import Seeds
from orchagent.web import validate

MAX_LISTED = 100  # seeds listed by /api/seeds, newest first


class SeedAPI:
    def __init__(self, seeds: Seeds):
        self._seeds = seeds

    async def receive(self, req) -> bool:
        await self._seeds.receive(validate.seed_id(req.params["seedId"]))
        return True

    async def send(self, req) -> bool:
        target = validate.host(req.params["targetHost"], "the target host")
        await self._seeds.send(target, validate.seed_id(req.params["seedId"]))
        return True

    async def abort(self, req) -> bool:
        await self._seeds.abort(validate.seed_id(req.params["seedId"]))
        return True

    async def throttle(self, req) -> bool:
        """Pace a running built-in send (on the source) at ``?bytesPerSecond=N`` from now on (0: no limit)."""
        rate = validate.bytes_per_second(req.arg("bytesPerSecond"), "bytesPerSecond")
        await self._seeds.throttle(validate.seed_id(req.params["seedId"]), rate)
        return True

    async def completed(self, req) -> bool:
        return self._seeds.record(validate.seed_id(req.params["seedId"])).completed

    async def succeeded(self, req) -> bool:
        return self._seeds.record(validate.seed_id(req.params["seedId"])).succeeded

    async def status(self, req) -> dict:
        """The detail orchestrator lacks: state, progress, rate, ETA and the error text."""
        return _status(self._seeds.record(validate.seed_id(req.params["seedId"])), self._seeds.now())

    async def seeds(self, req) -> list[dict]:
        """The seeds this agent knows (newest first, at most 100), each as ``seed-status`` shows it."""
        now = self._seeds.now()
        return [_status(record, now) for record in self._seeds.records(limit=MAX_LISTED)]

    async def post_copy(self, req) -> bool:
        """Orchestrator calls ``post-copy/?sourceHost=<h>``; the host reaches PostCopyCommand as
        ``$ORCHAGENT_SOURCE_HOST`` (V1 ignored it)."""
        source_host = req.arg("sourceHost")
        await self._seeds.post_copy(validate.host(source_host, "sourceHost") if source_host else None)
        return True


def _status(record, now: float) -> dict:
    """A record as ``seed-status`` shows it."""
    return {
        "SeedId": record.seed_id,
        "Role": record.role,
        "Mode": record.mode,
        "Peer": record.peer,
        "Path": record.path,
        "State": record.state,
        "Completed": record.completed,
        "Succeeded": record.succeeded,
        "BytesDone": record.bytes_done,
        "BytesTotal": record.bytes_total,
        "FilesDone": record.files_done,
        "FilesTotal": record.files_total,
        "WireBytes": record.wire_bytes,
        "DataBytes": record.data_bytes,
        "CompressionRatio": record.compression_ratio,
        "Resumes": record.resumes,
        "ResentBytes": record.resent_bytes,
        "Streams": record.streams,
        "BytesPerSecond": record.rate(now),
        "MaxBytesPerSecond": record.max_bytes_per_second,
        "EtaSeconds": record.eta(now),
        "Error": record.error,
        "Replication": record.replication,
        "StartedAt": _timestamp(record.started_at),
        "EndedAt": _timestamp(record.ended_at),
    }


def _timestamp(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(timespec="seconds")
