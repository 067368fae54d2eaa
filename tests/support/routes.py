"""Route tables for tests (the real one with only the API sections under test live, handlers that
fail) and the two clients that call them: through StubTreq, or over 127.0.0.1 on the real reactor."""

from __future__ import annotations

import json

from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from orchagent.errors import AgentError
from orchagent.token import Token
from orchagent.web.resource import ApiResource, Guard
from orchagent.web.routes import route_table

TOKEN = "cd" * 32


class NotUnderTest:
    """Handlers of an API section a test does not exercise: present so the route table builds; each
    answers an error naming itself if called, except the ``handlers`` given."""

    def __init__(self, **handlers):
        self.__dict__.update(handlers)

    def __getattr__(self, name):
        async def handler(req):
            raise AgentError(f"{name} is not part of these tests")
        return handler


def raising(error: Exception):
    """A handler that fails with ``error``: what the error funnel makes of it is under test."""
    async def handler(req):
        raise error
    return handler


def routes_for(*, storage=None, mysql=None, seeds=None):
    """The route table with these sections; every other one is `NotUnderTest`."""
    other = NotUnderTest()
    return route_table(other, storage or other, mysql or other, seeds or other, "/api/status",
                       apply_relaylog_max_bytes=0)  # the body limit is web.site's, not under test here


def with_token(path: str) -> str:
    return path + ("&" if "?" in path else "?") + "token=" + TOKEN


def api_resource(routes, clock) -> ApiResource:
    """The real resource over ``routes``, guarded by :data:`TOKEN`."""
    return ApiResource(routes, Guard(token=Token(TOKEN)), clock)


class SyncClient:
    """Requests through StubTreq for SynchronousTestCase: every handler must finish synchronously."""

    def __init__(self, testcase, routes, clock):
        self._testcase = testcase
        self._treq = StubTreq(api_resource(routes, clock))

    def request(self, path: str, method: str = "GET", data: bytes | None = None,
                headers=None) -> tuple[int, bytes]:
        """(status, body) of a request with the token."""
        response = self._testcase.successResultOf(
            self._treq.request(method, "http://agent" + with_token(path), data=data, headers=headers))
        return response.code, self._testcase.successResultOf(self._treq.content(response))

    def get(self, path: str) -> tuple[int, object]:
        code, body = self.request(path)
        return code, json.loads(body)


class LiveClient:
    """``routes`` served on 127.0.0.1 by a real Site, for trial TestCases on the real reactor."""

    def __init__(self, testcase, routes, reactor):
        site = Site(api_resource(routes, reactor))
        site.noisy = False
        self._port = reactor.listenTCP(0, site, interface="127.0.0.1")
        pool = HTTPConnectionPool(reactor, persistent=False)
        self._client = HTTPClient(Agent(reactor, pool=pool))
        testcase.addCleanup(self._port.stopListening)
        testcase.addCleanup(pool.closeCachedConnections)

    async def request(self, path: str, method: str = "GET", data: bytes | None = None) -> tuple[int, object]:
        """(status, decoded JSON body) of a request with the token."""
        url = f"http://127.0.0.1:{self._port.getHost().port}" + with_token(path)
        response = await self._client.request(method, url.encode("ascii"), data=data)
        return response.code, json.loads(await response.content())

    async def get(self, path: str) -> tuple[int, object]:
        return await self.request(path)
