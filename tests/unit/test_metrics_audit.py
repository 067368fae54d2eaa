"""``/metrics`` and the audit log, in memory: the real resource and route patterns, StubTreq, a Clock."""

import collections
import json
import os

from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from orchagent.errors import Conflict
from orchagent.seed.records import SeedRecord
from orchagent.token import Token
from orchagent.web.audit import AuditLog
from orchagent.web.coreapi import CoreAPI
from orchagent.web.metrics import Metrics
from orchagent.web.resource import ApiResource, Guard
from orchagent.web.routes import METRICS_PATH, Route
from tests.support.storage import StubMySQL

TOKEN = "5e" * 32


class Facts:
    """What the metrics read: command and registration counts, the disk, the seeds."""

    def __init__(self):
        self.outcomes = collections.Counter(succeeded=4, timed_out=1)
        self.calls = collections.Counter({("submit-agent", "ok"): 1, ("agent-ping", "failed"): 2})
        self.seed_records = [
            SeedRecord(3, "receive", "built-in", "", "/var/lib/mysql", 100.0, state="succeeded", ended_at=110.0),
            SeedRecord(4, "receive", "built-in", "", "/var/lib/mysql", 1000.0, bytes_done=600, bytes_total=1200,
                       data_started_at=1000.0, resumes=2),
        ]

    def seconds_since_answer(self):
        return 12.5

    async def usage(self, path):
        return 5000

    async def available(self, path):
        return 7000

    def records(self):
        return self.seed_records

    def now(self):
        return 1010.0


async def ok(req):
    return True


async def refused(req):
    raise Conflict("MySQL is running: stop it first")


class ObservedApi:
    def __init__(self, test, *, metrics=True, audit_path=""):
        facts = Facts()
        self.metrics = Metrics(commands=facts, registration=facts, mysql=StubMySQL("/var/lib/mysql", running=True),
                               disk=facts, seeds=facts)
        core = CoreAPI(hostname="db1", registrar=None, runner=None, custom_commands={}, metrics=self.metrics)
        routes = [Route("GET", "/api/seed-status/:seedId", ok), Route("GET", "/api/mysql-port", ok),
                  Route("GET", "/api/delete-mysql-datadir", refused, changes=True),
                  Route("GET", "/api/receive-mysql-seed-data/:seedId", ok, changes=True)]
        if metrics:
            routes.append(Route("GET", METRICS_PATH, core.metrics, token=False))
        observers = [AuditLog(audit_path)] + ([self.metrics] if metrics else [])
        self.client = StubTreq(ApiResource(routes, Guard(token=Token(TOKEN)), Clock(), observers))
        self.test = test

    def get(self, path, token=TOKEN):
        url = "http://agent" + path + (f"?token={token}" if token else "")
        response = self.test.successResultOf(self.client.get(url))
        return response.code, self.test.successResultOf(self.client.content(response))


def samples(text: str) -> dict:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


class MetricsTests(SynchronousTestCase):
    """/metrics counts requests by route pattern and reads the host's facts, with no secret in it."""

    def test_requests_are_counted_by_route_pattern_and_status(self):
        api = ObservedApi(self)
        for path in ("/api/seed-status/4", "/api/seed-status/5", "/api/mysql-port", "/api/delete-mysql-datadir"):
            api.get(path)
        api.get("/api/mysql-port", token="wrong")
        api.get("/api/no-such-route")
        code, body = api.get(METRICS_PATH, token=None)
        self.assertEqual(code, 200)
        text = body.decode()
        values = samples(text)

        def requests(route, code):
            return values.get(("orchagent_http_requests_total", (("code", code), ("method", "GET"), ("route", route))))

        self.assertEqual(requests("/api/seed-status/:seedId", "200"), 2)
        self.assertEqual(requests("/api/mysql-port", "200"), 1)
        self.assertEqual(requests("/api/mysql-port", "401"), 1)
        self.assertEqual(requests("/api/delete-mysql-datadir", "409"), 1)
        self.assertEqual(requests("unmatched", "404"), 1)
        self.assertEqual(values[("orchagent_http_request_duration_seconds_count",
                                 (("route", "/api/seed-status/:seedId"),))], 2)
        self.assertNotIn(TOKEN, text)
        self.assertNotIn("wrong", text)

    def test_host_facts_commands_registration_and_seeds(self):
        values = samples(ObservedApi(self).get(METRICS_PATH, token=None)[1].decode())
        self.assertEqual(values[("orchagent_commands_total", (("outcome", "succeeded"),))], 4)
        self.assertEqual(values[("orchagent_commands_total", (("outcome", "timed_out"),))], 1)
        self.assertEqual(values[("orchagent_commands_total", (("outcome", "failed"),))], 0)
        self.assertEqual(values[("orchagent_registration_calls_total", (("call", "agent-ping"), ("outcome", "failed")))], 2)
        self.assertEqual(values[("orchagent_orchestrator_last_answer_age_seconds", ())], 12.5)
        self.assertEqual(values[("orchagent_mysql_up", ())], 1)
        self.assertEqual(values[("orchagent_datadir_bytes", ())], 5000)
        self.assertEqual(values[("orchagent_datadir_free_bytes", ())], 7000)
        self.assertEqual(values[("orchagent_seeds", (("role", "receive"), ("state", "succeeded")))], 1)
        self.assertEqual(values[("orchagent_seeds", (("role", "receive"), ("state", "running")))], 1)
        running = (("role", "receive"), ("seed_id", "4"))
        self.assertEqual(values[("orchagent_seed_bytes_done", running)], 600)
        self.assertEqual(values[("orchagent_seed_bytes_total", running)], 1200)
        self.assertEqual(values[("orchagent_seed_bytes_per_second", running)], 60)
        self.assertEqual(values[("orchagent_seed_resumes", running)], 2)
        self.assertNotIn(("orchagent_seed_bytes_done", (("role", "receive"), ("seed_id", "3"))), values)

    def test_metrics_can_be_switched_off(self):
        self.assertEqual(ObservedApi(self, metrics=False).get(METRICS_PATH, token=None)[0], 404)


class AuditLogTests(SynchronousTestCase):
    """Every change and every refusal is one JSON line, without the token; plain reads are not logged."""

    def lines(self, path):
        with open(path) as f:
            return [json.loads(line) for line in f]

    def test_changes_and_refusals_are_recorded(self):
        path = os.path.abspath(self.mktemp())
        api = ObservedApi(self, audit_path=path)
        api.get("/api/mysql-port")  # a read: not recorded
        api.get("/api/receive-mysql-seed-data/42")
        api.get("/api/delete-mysql-datadir")
        api.get("/api/mysql-port", token="wrong-token")
        api.get(METRICS_PATH, token=None)
        lines = self.lines(path)
        self.assertEqual([(line["route"], line["status"], line["outcome"]) for line in lines], [
            ("/api/receive-mysql-seed-data/:seedId", 200, "ok"),
            ("/api/delete-mysql-datadir", 409, "refused"),
            ("/api/mysql-port", 401, "refused"),
        ])
        self.assertEqual((lines[0]["seed_id"], lines[0]["params"], lines[0]["query"]), (42, {"seedId": "42"}, {}))
        self.assertEqual(lines[1]["error"], "MySQL is running: stop it first")
        self.assertTrue(lines[2]["error"].startswith("Invalid token"))
        self.assertEqual(set(lines[0]), {"time", "client", "tls_subject", "method", "route", "params", "query",
                                         "status", "outcome", "error", "seconds", "seed_id"})
        with open(path) as f:
            text = f.read()
        self.assertNotIn(TOKEN, text)
        self.assertNotIn("wrong-token", text)

    def test_a_planted_link_is_not_followed(self):
        victim = os.path.abspath(self.mktemp())
        with open(victim, "w") as f:
            f.write("untouched\n")
        path = os.path.abspath(self.mktemp())
        os.symlink(victim, path)
        ObservedApi(self, audit_path=path).get("/api/receive-mysql-seed-data/1")
        with open(victim) as f:
            self.assertEqual(f.read(), "untouched\n")
        self.flushLoggedErrors()
