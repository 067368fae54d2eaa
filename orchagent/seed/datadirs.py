"""Which seed's data each datadir holds, and which seed is receiving into it.

One receive at a time per datadir, from arming until its partial copy is cleared.  The holders
are persisted before any data can flow, so a late cleanup (after an abort, or at the next start)
never removes a later seed's data, and ``post-copy`` answers for the seed that is actually there.
The cleanup itself is here too: a failed receive's datadir is emptied only while it still holds
that seed's partial data.
"""

from __future__ import annotations

from typing import Callable, Iterable

from twisted.internet.defer import Deferred

from orchagent import logs
from orchagent.errors import Conflict
from orchagent.interfaces import DatadirEraser
from orchagent.seed.records import COMPLETE, EMPTIED, PARTIAL, RUNNING, SUCCEEDED, Holder, SeedRecord

log = logs.logger(__name__)


class DatadirHolders:
    """The seed holding each datadir's data (saved through ``save``) and the one receiving into it;
    ``eraser`` empties a datadir after a failed receive."""

    def __init__(self, save: Callable[[dict[str, Holder]], Deferred], eraser: DatadirEraser) -> None:
        self._save = save  # gets a copy; saves must reach the disk in call order
        self._eraser = eraser
        self._holders: dict[str, Holder] = {}  # datadir -> the seed whose data it holds
        self._receiving: dict[str, int] = {}  # datadir -> the seed receiving into it or clearing it

    def load(self, saved: dict[str, Holder] | None, records: Iterable[SeedRecord]) -> None:
        """Start from what was saved; without it (an older agent), from the seed records."""
        self._holders = _holders_of(records) if saved is None else saved

    def holder(self, datadir: str) -> Holder | None:
        return self._holders.get(datadir)

    def holds_partial(self, datadir: str, seed_id: int) -> bool:
        """``datadir`` holds ``seed_id``'s partial data (so clearing it removes nothing else)."""
        return self._holders.get(datadir) == Holder(seed_id, PARTIAL)

    def refuse_second_receive(self, datadir: str) -> None:
        seed_id = self._receiving.get(datadir)
        if seed_id is not None:
            raise Conflict(f"seed {seed_id} is receiving into the datadir {datadir}, or its partial copy is "
                           f"being removed: one receive per datadir at a time (abort-seed/{seed_id} first)")

    def reserve(self, datadir: str, seed_id: int) -> None:
        """No other receive into ``datadir`` until :meth:`release`."""
        self._receiving[datadir] = seed_id

    def release(self, datadir: str, seed_id: int) -> None:
        if self._receiving.get(datadir) == seed_id:
            del self._receiving[datadir]

    def start_receive(self, datadir: str, seed_id: int) -> Deferred:
        """``seed_id`` receives into ``datadir``: fires once its holding is saved."""
        self.reserve(datadir, seed_id)
        self._holders[datadir] = Holder(seed_id, PARTIAL)
        return self._save(dict(self._holders))

    async def mark(self, datadir: str, seed_id: int, was: str, now: str) -> None:
        """The datadir's holder goes from ``was`` to ``now``, if it is still this seed."""
        if self._holders.get(datadir) == Holder(seed_id, was):
            self._holders[datadir] = Holder(seed_id, now)
            await self._save(dict(self._holders))

    async def emptied(self, datadir: str) -> None:
        """The datadir holds no seed's data any more."""
        holder = self._holders.get(datadir)
        if holder is not None and holder.data != EMPTIED:
            self._holders[datadir] = Holder(holder.seed_id, EMPTIED)
            await self._save(dict(self._holders))

    async def clear_partial_copy(self, record: SeedRecord) -> None:
        """Empty the seed's datadir, only if it still holds this seed's partial data."""
        if not self.holds_partial(record.path, record.seed_id):
            log.info("seed {seed_id}: the datadir {path} does not hold its partial data ({holder}); "
                     "left alone", seed_id=record.seed_id, path=record.path, holder=self.holder(record.path))
            return
        try:
            await self._eraser.empty(record.path, after_failed_seed=True)
        except Exception as e:
            log.error("seed {seed_id}: could not empty the datadir {path} after the failed seed: {error}; "
                      "do not start MySQL on it", seed_id=record.seed_id, path=record.path, error=str(e))
            return
        await self.mark(record.path, record.seed_id, PARTIAL, EMPTIED)

    async def clear_after_restart(self, record: SeedRecord) -> None:
        """A receive that was running when the agent stopped is never resumed: what it had verified
        lived only in the stopped process, and a staging tree nobody can vouch for is unknown state,
        so unsafe.  Its partial copy (staging included) goes, and the seed is run again from the start."""
        try:
            await self.clear_partial_copy(record)
        finally:
            self.release(record.path, record.seed_id)


def _holders_of(records: Iterable[SeedRecord]) -> dict[str, Holder]:
    """Without ``datadirs.json`` (records of an older agent): each datadir holds its latest receive."""
    holders: dict[str, Holder] = {}
    for record in sorted(records, key=lambda r: r.started_at):
        if record.role == "receive":
            data = {RUNNING: PARTIAL, SUCCEEDED: COMPLETE}.get(record.state, EMPTIED)
            holders[record.path] = Holder(record.seed_id, data)
    return holders
