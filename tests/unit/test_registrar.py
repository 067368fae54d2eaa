"""Registration and heartbeat against a fake orchestrator, on a fake clock."""

from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from orchagent.registrar import QuietConnectionPool, Registrar
from tests.support.fake_orchestrator import FakeOrchestrator

TOKEN = "f0" * 32


class RefusingClient:
    def __init__(self):
        self.calls = 0

    def get(self, url, **kwargs):
        self.calls += 1
        return defer.fail(ConnectionRefusedError("refused"))


class RegistrarTests(SynchronousTestCase):
    """Registration and heartbeats keep their schedule and survive every orchestrator failure."""

    def make(self, client, urls=("http://orch:3001",), poll=60, resubmit=60, bad=300):
        self.clock = Clock()
        self.clock.advance(1000)
        registrar = Registrar(client=client, clock=self.clock, urls=urls, hostname="db1", http_port=3002,
                              token=TOKEN, poll_seconds=poll, resubmit_minutes=resubmit,
                              status_bad_seconds=bad, timeout=10, jitter=lambda: 0.5)
        registrar.startService()
        self.addCleanup(registrar.stopService)
        return registrar

    def run_for(self, seconds, stub=None, step=1):
        for _ in range(int(seconds / step)):
            self.clock.advance(step)
            if stub is not None:
                stub.flush()

    def test_registers_at_start_then_pings_and_resubmits_on_schedule(self):
        orch = FakeOrchestrator()
        stub = StubTreq(orch)
        self.make(stub, resubmit=2)
        stub.flush()
        self.assertEqual(orch.paths, [f"/api/submit-agent/db1/3002/{TOKEN}"])
        self.run_for(60, stub)
        self.assertEqual(orch.paths[-1], "/api/agent-ping")
        self.run_for(60, stub)
        self.assertEqual(orch.paths[1:], ["/api/agent-ping", f"/api/submit-agent/db1/3002/{TOKEN}"])

    def test_status_ok_at_start_bad_when_orchestrator_silent_ok_again_after_ping(self):
        orch = FakeOrchestrator()
        orch.code = 500
        stub = StubTreq(orch)
        registrar = self.make(stub, bad=300)
        stub.flush()
        self.assertTrue(registrar.healthy(), "must not read BAD just because the agent started")
        self.run_for(301, stub)
        self.assertFalse(registrar.healthy())
        orch.code = 200
        self.run_for(61, stub)
        self.assertTrue(registrar.healthy())

    def test_survives_500_with_backoff_and_retries_submit(self):
        orch = FakeOrchestrator()
        orch.code = 500
        stub = StubTreq(orch)
        self.make(stub)
        stub.flush()
        self.run_for(15, stub)
        # 2, 4, 8 s backoff after failures: several tries in 15 s, all of them submits
        self.assertGreaterEqual(len(orch.paths), 4)
        self.assertEqual(set(orch.paths), {f"/api/submit-agent/db1/3002/{TOKEN}"})
        orch.code = 200
        self.run_for(120, stub)
        self.assertEqual(orch.paths[-1], "/api/agent-ping")

    def test_error_envelope_counts_as_failure(self):
        orch = FakeOrchestrator()
        orch.body = b'{"Code":"ERROR","Message":"strconv.Atoi: bad port","Details":null}'
        stub = StubTreq(orch)
        self.make(stub)
        stub.flush()
        self.run_for(10, stub)
        self.assertEqual(set(orch.paths), {f"/api/submit-agent/db1/3002/{TOKEN}"})
        self.assertGreater(len(orch.paths), 1)

    def test_timeout_is_a_failure_and_the_loop_goes_on(self):
        orch = FakeOrchestrator()
        orch.hang = True
        stub = StubTreq(orch)
        registrar = self.make(stub, bad=30)
        stub.flush()
        self.run_for(60, stub)
        self.assertFalse(registrar.healthy())
        self.assertGreater(len(orch.paths), 2)

    def test_refused_connections_never_stop_the_loop(self):
        client = RefusingClient()
        self.make(client)
        self.run_for(600)
        self.assertGreater(client.calls, 10)

    def test_every_orchestrator_node_is_registered(self):
        orch = FakeOrchestrator()
        stub = StubTreq(orch)
        hosts = []
        original = stub.get

        def get(url, **kwargs):
            hosts.append(url.split("/api/")[0])
            return original(url, **kwargs)

        stub.get = get
        self.make(stub, urls=("http://o1:3001", "http://o2:3001"))
        stub.flush()
        self.assertEqual(sorted(hosts), ["http://o1:3001", "http://o2:3001"])

    def test_no_orchestrator_is_always_healthy(self):
        registrar = self.make(RefusingClient(), urls=())
        self.run_for(1000, step=100)
        self.assertTrue(registrar.healthy())

    def test_stop_cancels_sleeping_loops(self):
        orch = FakeOrchestrator()
        stub = StubTreq(orch)
        registrar = self.make(stub)
        stub.flush()
        self.successResultOf(registrar.stopService())
        self.run_for(600, stub, step=60)
        self.assertEqual(len(orch.paths), 1)


class RegistrationLogTests(SynchronousTestCase):
    """The first successful submit-agent per node is logged at INFO with name, port and URL; no more."""

    def test_first_successful_submit_is_logged_once(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        orch = FakeOrchestrator()
        orch.code = 500
        stub = StubTreq(orch)
        clock = Clock()
        registrar = Registrar(client=stub, clock=clock, urls=("http://orch:3001",), hostname="db1", http_port=3002,
                              token=TOKEN, poll_seconds=0, resubmit_minutes=1, status_bad_seconds=300, timeout=10,
                              jitter=lambda: 0.5)
        registrar.startService()
        self.addCleanup(registrar.stopService)
        stub.flush()
        orch.code = 200
        for _ in range(200):  # the retry, then resubmits every minute
            clock.advance(1)
            stub.flush()
        self.assertGreater(orch.paths.count(f"/api/submit-agent/db1/3002/{TOKEN}"), 2)
        infos = [formatEvent(e) for e in events
                 if e.get("log_level") == LogLevel.info and e.get("log_namespace") == "orchagent.registrar"]
        self.assertEqual(infos, ["registered with orchestrator http://orch:3001 as db1 port 3002"])


class QuietPoolTests(SynchronousTestCase):
    """Connections to orchestrator do not log Twisted's "Starting factory" / "Stopping factory" pair."""

    def test_the_pools_factories_are_not_noisy(self):
        pool = QuietConnectionPool(Clock())
        self.assertFalse(pool._factory(lambda protocol: None, "orch").noisy)
