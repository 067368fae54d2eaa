"""Route tables for tests: the real one with only the API sections under test live, and handlers that fail."""

from __future__ import annotations

from orchagent.errors import AgentError
from orchagent.web.routes import route_table


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
