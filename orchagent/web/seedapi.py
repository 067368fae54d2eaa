"""Handlers for seeding (contract A.2 #24-28, B.2): answer at once, the work goes on in the background."""

from __future__ import annotations

import datetime
import time

from orchagent.web import validate


class SeedAPI:
    def __init__(self, seeds, post_copy):
        """``post_copy`` is the MySQL API's handler, run only after :meth:`check_post_copy` agrees."""
        self._seeds = seeds
        self._post_copy = post_copy

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

    async def completed(self, req) -> bool:
        return self._seeds.record(validate.seed_id(req.params["seedId"])).completed

    async def succeeded(self, req) -> bool:
        return self._seeds.record(validate.seed_id(req.params["seedId"])).succeeded

    async def status(self, req) -> dict:
        """The detail orchestrator lacks: state, progress, rate, ETA and the error text."""
        record = self._seeds.record(validate.seed_id(req.params["seedId"]))
        elapsed = (record.ended_at or time.time()) - (record.data_started_at or record.started_at)
        rate = int(record.bytes_done / elapsed) if elapsed > 0 else 0
        eta = None
        if not record.completed and rate and record.bytes_total is not None:
            eta = max(record.bytes_total - record.bytes_done, 0) // rate
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
            "BytesPerSecond": rate,
            "EtaSeconds": eta,
            "Error": record.error,
            "StartedAt": _timestamp(record.started_at),
            "EndedAt": _timestamp(record.ended_at),
        }

    async def post_copy(self, req):
        await self._seeds.check_post_copy()
        return await self._post_copy(req)


def _timestamp(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(timespec="seconds")
