"""Stand-ins and a client for testing the storage routes through the real route table and resource."""

from __future__ import annotations

import json

from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet.defer import maybeDeferred
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from orchagent.errors import AgentError, Conflict
from orchagent.token import Token
from orchagent.web.resource import ApiResource, Guard
from tests.support.routes import routes_for

TOKEN = "cd" * 32


class StubMySQL:
    """What storage and seeds ask of ``orchagent.host.mysql.MySQL``: the datadir and whether it runs."""

    def __init__(self, datadir: str | None, running: bool = False):
        self.data_directory = datadir
        self.running = running

    async def datadir(self) -> str:
        if self.data_directory is None:
            raise AgentError("cannot tell where MySQL keeps its data (stand-in)")
        return self.data_directory

    async def is_running(self) -> bool:
        return self.running

    async def require_stopped(self, action: str) -> None:
        if self.running:
            raise Conflict(f"refusing to {action}: MySQL is running (stand-in)")


def sync_thread(function, *args):
    """``defer_to_thread`` for unit tests: run at once, on this thread."""
    return maybeDeferred(function, *args)


def storage_resource(storage, clock) -> ApiResource:
    return ApiResource(routes_for(storage=storage), Guard(token=Token(TOKEN)), clock)


def with_token(path: str) -> str:
    return path + ("&" if "?" in path else "?") + "token=" + TOKEN


class SyncClient:
    """GETs through StubTreq for SynchronousTestCase: every handler must finish synchronously."""

    def __init__(self, testcase, storage, clock):
        self._testcase = testcase
        self._treq = StubTreq(storage_resource(storage, clock))

    def get(self, path: str) -> tuple[int, object]:
        response = self._testcase.successResultOf(self._treq.get("http://agent" + with_token(path)))
        body = self._testcase.successResultOf(self._treq.content(response))
        return response.code, json.loads(body)


class LiveClient:
    """The storage routes served on 127.0.0.1 by a real Site, for trial TestCases on the real reactor."""

    def __init__(self, testcase, storage, reactor):
        site = Site(storage_resource(storage, reactor))
        site.noisy = False
        self._port = reactor.listenTCP(0, site, interface="127.0.0.1")
        pool = HTTPConnectionPool(reactor, persistent=False)
        self._client = HTTPClient(Agent(reactor, pool=pool))
        testcase.addCleanup(self._port.stopListening)
        testcase.addCleanup(pool.closeCachedConnections)

    async def get(self, path: str) -> tuple[int, object]:
        url = f"http://127.0.0.1:{self._port.getHost().port}" + with_token(path)
        response = await self._client.get(url.encode("ascii"))
        body = await response.content()
        return response.code, json.loads(body)
