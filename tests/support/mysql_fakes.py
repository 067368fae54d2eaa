"""Test doubles for the MySQL host layer: synthetic binlogs, an inline "thread pool", a liveness probe,
and the route table with only the MySQL section live (the process runner is ``fake_runner.FakeRunner``)."""

from __future__ import annotations

import os
import zlib

from twisted.internet.task import Clock
from twisted.python.failure import Failure

from orchagent.graph import make_host, mysql_api
from orchagent.host.liveness import Findings
from orchagent.seed.manager import SeedManager
from orchagent.seed.records import SeedStore
from orchagent.threads import thread_runner
from orchagent.web.seedapi import SeedAPI
from tests.support.routes import NotUnderTest, routes_for

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")


def binlog(body: bytes, header_payload: bytes = b"H" * 100) -> bytes:
    """Magic, a Format Description event of 19 + len(header_payload) bytes, then ``body``."""
    size = 19 + len(header_payload)
    event = (b"\0\0\0\0" + bytes([15]) + b"\1\0\0\0" + size.to_bytes(4, "little")
             + (4 + size).to_bytes(4, "little") + b"\0\0")
    return b"\xfebin" + event + header_payload + body


HEADER = len(binlog(b""))  # 123, as in MySQL 5.7's logs


def event(kind: int, body: bytes, checksum: bool = True, flags: int = 0) -> bytes:
    """One binlog event: the 19-byte header, ``body``, then its CRC32 when ``checksum``."""
    size = 19 + len(body) + (4 if checksum else 0)
    data = (b"\0\0\0\0" + bytes([kind]) + b"\1\0\0\0" + size.to_bytes(4, "little") + b"\0\0\0\0"
            + flags.to_bytes(2, "little") + body)
    return data + zlib.crc32(data).to_bytes(4, "little") if checksum else data


def format_description(checksum: bool = True, version: bytes = b"10.11.19-MariaDB-log") -> bytes:
    """A Format Description event naming CRC32 (or OFF); its 4 checksum bytes are there either way."""
    body = b"\4\0" + version.ljust(50, b"\0") + b"\0" * 4 + bytes([19]) + b"\x38" * 40 + bytes([checksum])
    return event(15, body) if checksum else event(15, body + b"\0" * 4, checksum=False)


def verifiable_binlog(*queries: bytes, checksum: bool = True) -> bytes:
    """Magic, a Format Description event, then a Query event per ``queries``, checksums as asked."""
    return b"\xfebin" + format_description(checksum) + b"".join(event(2, query, checksum) for query in queries)


def safe_client(stdin: bytes) -> bytes:
    """What a sandboxed MariaDB client without local-infile writes to stderr for orchagent's probes."""
    if b"\\. /dev/null" in stdin:
        return b"ERROR at line 2: Not allowed in the sandbox mode\n"
    if b"LOAD DATA LOCAL" in stdin:
        return (b"ERROR 4166 (HY000) at line 2: The used command is not allowed because the MariaDB server "
                b"or client has disabled the local infile capability\n")
    return b""


class InlineThreadsReactor(Clock):
    """A fake clock that is also enough of a reactor for ``deferToThreadPool``: the "thread" runs the call at once."""

    def getThreadPool(self):
        return self

    def callInThreadWithCallback(self, on_result, function, *args, **kwargs):
        try:
            result = function(*args, **kwargs)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)

    def callFromThread(self, function, *args, **kwargs):
        function(*args, **kwargs)


class FakeProbe:
    """Stands in for :func:`orchagent.host.liveness.probe`: answers ``findings``, keeps where it looked."""

    def __init__(self, findings: Findings = Findings()):
        self.findings = findings
        self.places: list = []

    def __call__(self, places):
        self.places.append(places)
        return self.findings


def mysql_routes(config, runner, reactor, mysql):
    """The real route table with the MySQL section live over ``mysql``, wired as the agent wires it,
    and post-copy through a seed manager no seed ever came to."""
    host = make_host(config, runner, reactor, mysql, in_thread=thread_runner(reactor))
    seeds = SeedManager(config=config, reactor=reactor, mysql=mysql, snapshots=host.snapshots, eraser=host.datadir,
                        disk=host.disk, runner=runner, store=SeedStore(config.state_directory),
                        defer_to_thread=thread_runner(reactor))
    return routes_for(mysql=mysql_api(config, host), seeds=NotUnderTest(post_copy=SeedAPI(seeds).post_copy))
