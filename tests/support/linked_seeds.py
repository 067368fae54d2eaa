"""A TestCase class around one seed source whose agent sends through a slow link, so that seeds can
be caught in flight: the source, the link and every agent last for the class."""

from __future__ import annotations

import shutil
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from testbed.agent import free_port, start_agent
from testbed.orchestrator import HostAgent
from testbed.seed_link import SlowLink
from testbed.seeding import TARGET_ADDRESS, SeedSource

MB = 1024 * 1024


class LinkedSeedTestCase(SynchronousTestCase):
    """``cls.source`` (a btrfs `SeedSource` made with ``source_options``) and ``cls.link``, a `SlowLink`
    at ``link_rate`` to the target's seed port ``cls.target_seed_port``; :meth:`build` adds the class's
    agents with :meth:`start_agent`.  After the class (or a failed set-up) the agents still running are
    stopped, the link closed and the source destroyed."""

    source_options: dict = {}
    link_rate = 16 * MB

    @classmethod
    def setUpClass(cls):
        cls.directory = tempfile.mkdtemp(prefix="orchagent-linked-seeds-")
        cls.agents = []
        cls.source = SeedSource(cls.directory, **cls.source_options)
        try:
            cls.target_seed_port = free_port(TARGET_ADDRESS)
            cls.link = SlowLink(TARGET_ADDRESS, cls.target_seed_port, rate=cls.link_rate)
            cls.build()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def build(cls) -> None:
        """The class's own agents and state (the source agent sends to ``cls.link.port``)."""

    @classmethod
    def start_agent(cls, settings: dict, address: str, directory: str | None = None) -> HostAgent:
        """Stopped at the end of the class (a test may kill one earlier)."""
        agent = start_agent(settings, address=address,
                            directory=directory or tempfile.mkdtemp(dir=cls.directory, prefix="agent-"))
        cls.agents.append(agent)
        return HostAgent.of(agent)

    @classmethod
    def running_agent(cls, host: HostAgent):
        return next(agent for agent in cls.agents if agent.port == host.port)

    @classmethod
    def tearDownClass(cls):
        for agent in cls.agents:
            if agent.process.poll() is None:
                agent.stop()
        if hasattr(cls, "link"):
            cls.link.close()
        cls.source.destroy()
        shutil.rmtree(cls.directory, ignore_errors=True)
