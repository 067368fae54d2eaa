"""What follows a seed on the target: ``post-copy`` runs only on a datadir that holds a whole seed,
and with ``SeedStartReplication`` the ``mysql-start`` after a hot seed also starts replication."""

from __future__ import annotations

from typing import Callable, Mapping

from twisted.internet.defer import Deferred

from orchagent import logs
from orchagent.config import Config
from orchagent.errors import AgentError, Conflict
from orchagent.host.hotbackup import BinlogPosition
from orchagent.interfaces import MySQLServer
from orchagent.seed.datadirs import DatadirHolders
from orchagent.seed.records import COMPLETE, SeedRecord

log = logs.logger(__name__)


class AfterCopy:
    """The seed checks and steps of ``post-copy`` and ``mysql-start``, over the manager's records."""

    def __init__(self, *, config: Config, mysql: MySQLServer, datadirs: DatadirHolders,
                 records: Callable[[], Mapping[int, SeedRecord]], save: Callable[[SeedRecord], Deferred],
                 replication=None) -> None:
        """``replication``: an :class:`orchagent.host.replication.ReplicationSetup`, for SeedStartReplication."""
        self._config = config
        self._mysql = mysql
        self._datadirs = datadirs
        self._records = records
        self._save = save
        self._replication = replication

    async def check(self, source_host: str | None = None) -> None:
        """``post-copy`` must not prepare a datadir unless the seed whose data it holds arrived whole.

        Orchestrator names the seed's source there (``sourceHost``, validated): the host a hot seed's
        replication connects to.
        """
        datadir = await self._mysql.datadir()
        self._datadirs.refuse_second_receive(datadir)
        holder = self._datadirs.holder(datadir)
        if holder is None:
            if any(r.role == "receive" and r.path == datadir for r in self._records().values()):
                raise Conflict(f"no record of which seed's data is in the datadir {datadir}; refusing to "
                               f"run the post-copy step (seed it again)")
            return  # no seed ever came here: a manual post-copy is allowed
        record = self._records().get(holder.seed_id)
        if record is None or not record.succeeded or holder.data != COMPLETE:
            state = f"{record.state}: {record.error}" if record is not None and record.error else (
                record.state if record is not None else "unknown here")
            raise Conflict(f"seed {holder.seed_id} is {state} (the datadir {datadir} holds its data "
                           f"{holder.data}); refusing to run the post-copy step on a datadir that did not "
                           f"receive a whole seed")
        if source_host and record.source_host != source_host:
            record.source_host = source_host
            await self._save(record)

    async def start_replication(self) -> None:
        """After ``mysql-start``, with SeedStartReplication: once per seed, point the server at the source of
        the hot seed whose whole copy the datadir holds, from the position the backup recorded.

        Never raises (mysql-start has succeeded either way); what was configured, or why nothing was,
        goes to the seed's record (seed-status shows it) and to the log.
        """
        if self._replication is None or not self._config.seed_start_replication:
            return
        try:
            datadir = await self._mysql.datadir()
        except AgentError as e:
            log.warn("SeedStartReplication: cannot tell which seed the datadir holds: {error}", error=str(e))
            return
        holder = self._datadirs.holder(datadir)
        record = self._records().get(holder.seed_id) if holder is not None and holder.data == COMPLETE else None
        if record is None or not record.succeeded or record.replication:
            return  # no seed here, or replication was set up after it already: a restart must not rewind it
        position = (BinlogPosition(record.binlog_file, record.binlog_position or 0, record.gtid)
                    if record.has_coordinates else None)
        record.replication = await self._replication.configure(record.source_host, record.source_port, position)
        log.info("seed {seed_id}: {replication}", seed_id=record.seed_id, replication=record.replication)
        await self._save(record)
