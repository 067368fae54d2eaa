"""Handlers for the MySQL service, its error log, relay logs and binlogs (contract A.2 #16-20, 23, 29-35).

Request values are validated here (orchagent.web.validate), before anything runs: integers must be
integers, a log name a plain file name or absolute path; log names are then checked against the
server's own indexes (:mod:`orchagent.host.relaylog`).
"""

from __future__ import annotations

import os

from orchagent.host.mysql import MySQL
from orchagent.host.relaylog import ReplicationLogs
from orchagent.web import validate


class MySQLAPI:
    def __init__(self, mysql: MySQL, replication_logs: ReplicationLogs, *, error_log_tail_lines: int):
        self._mysql = mysql
        self._logs = replication_logs
        self._error_log_tail_lines = error_log_tail_lines

    async def status(self, req) -> bool:
        """A bare boolean (503 only when no command slot is free): orchestrator decodes it into ``MySQLRunning``."""
        return await self._mysql.is_running()

    async def port(self, req) -> int:
        return await self._mysql.port()

    async def error_log_tail(self, req) -> list[str]:
        return await self._mysql.error_log_tail(self._error_log_tail_lines)

    async def stop(self, req) -> bool:
        await self._mysql.stop()
        return True

    async def start(self, req) -> bool:
        await self._mysql.start()
        return True

    async def relay_log_index_file(self, req) -> str:
        return await self._logs.relay_index_file()

    async def relay_log_files(self, req) -> list[str]:
        return await self._logs.relay_log_files()

    async def relay_log_end_coordinates(self, req) -> dict:
        coordinates = await self._logs.relay_log_end_coordinates()
        return {"LogFile": coordinates.log_file, "LogPos": coordinates.log_pos, "Type": coordinates.type}

    async def binlog_contents(self, req) -> str:
        """``mysqlbinlog`` text of the named logs, gzipped and base64-encoded (as V1)."""
        return await self._logs.binlog_text(*_binlog_range(req))

    async def binlog_binary_contents(self, req) -> str:
        """The raw log bytes, gzipped and base64-encoded (V1 returned the text here by mistake)."""
        return await self._logs.binlog_bytes(*_binlog_range(req))

    async def relaylog_contents_tail(self, req) -> str:
        start = validate.position(req.params["start"], "start")
        return await self._logs.relaylog_tail(validate.log_name(req.params["relaylog"]), start)

    async def apply_relaylog_contents(self, req) -> str:
        body = req.body
        size = req.content_length
        if size is None:
            size = body.seek(0, os.SEEK_END) if body is not None else 0
        await self._logs.apply_relaylog(body, size)
        return "OK"


def _binlog_range(req) -> tuple[list[str], int, int]:
    names = validate.log_names(req.query.get("binlog", []), "binlog")
    return names, validate.position(req.arg("start"), "start"), validate.position(req.arg("stop"), "stop")
