"""Which seed's data each datadir holds, and which seed is receiving into it.

One receive at a time per datadir, from arming until its partial copy is cleared.  The holders
are persisted before any data can flow, so a late cleanup (after an abort, or at the next start)
never removes a later seed's data, and ``post-copy`` answers for the seed that is actually there.
"""

from __future__ import annotations

from typing import Callable, Iterable

from twisted.internet.defer import Deferred

from orchagent.errors import Conflict
from orchagent.seed.records import COMPLETE, EMPTIED, PARTIAL, RUNNING, SUCCEEDED, Holder, SeedRecord


class DatadirHolders:
    """The seed holding each datadir's data (saved through ``save``) and the one receiving into it."""

    def __init__(self, save: Callable[[dict[str, Holder]], Deferred]) -> None:
        self._save = save  # gets a copy; saves must reach the disk in call order
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


def _holders_of(records: Iterable[SeedRecord]) -> dict[str, Holder]:
    """Without ``datadirs.json`` (records of an older agent): each datadir holds its latest receive."""
    holders: dict[str, Holder] = {}
    for record in sorted(records, key=lambda r: r.started_at):
        if record.role == "receive":
            data = {RUNNING: PARTIAL, SUCCEEDED: COMPLETE}.get(record.state, EMPTIED)
            holders[record.path] = Holder(record.seed_id, data)
    return holders
