"""Real agents (``twistd -n orchagent``) in trial TestCases on the real reactor: started per test,
stopped at cleanup, with a fake orchestrator to register with and a client that keeps no connection."""

import os
import time

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from testbed.agent import start_agent
from tests.support.fake_orchestrator import FakeOrchestrator


def one_shot_pool():
    """No persistent connections: nothing may outlive a test."""
    return HTTPConnectionPool(reactor, persistent=False)


def plain_http():
    """An HTTP client for one test: plain HTTP, no persistent connections."""
    return HTTPClient(Agent(reactor, pool=one_shot_pool()))


async def wait_for(predicate, timeout=20.0, what="condition"):
    """Until ``predicate()`` is true, letting the reactor run; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await deferLater(reactor, 0.05, lambda: None)


class AgentTestCase(TestCase):
    """Real agents started per test and stopped at cleanup, and a fake orchestrator for them to register with."""

    timeout = 120

    async def start(self, settings, **kwargs):
        agent = await deferToThread(start_agent, settings, directory=self.mktemp_dir(), **kwargs)
        self.addCleanup(lambda: deferToThread(agent.stop))
        return agent

    def mktemp_dir(self):
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        return path

    def orchestrator(self, context=None):
        fake = FakeOrchestrator()
        return fake, fake.listen(self, reactor, context)

    async def get(self, url, client=None, **kwargs):
        response = await (client or plain_http()).get(url, **kwargs)
        return response.code, await response.content()
