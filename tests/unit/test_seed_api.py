"""The seed routes validate ``seedId`` and ``targetHost`` before anything happens."""

import json
import urllib.parse

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from orchagent.errors import Conflict
from orchagent.seed.records import SeedRecord
from orchagent.token import Token
from orchagent.web.resource import ApiResource, Guard
from orchagent.web.routes import Route
from orchagent.web.seedapi import SeedAPI

TOKEN = "0123456789abcdef" * 4
HOSTILE = ["1;touch /tmp/x", "1|id", "$(touch M)", "`id`", "1\nid", "../1", "1\x00", "-1", "0", "1.5",
           "x" * 10240, "99999999999999999999", " 1", "db2 -e x"]
NOT_SEED_IDS = HOSTILE + ["1e3", "0x10", "seven"]


class RecordingSeeds:
    def __init__(self):
        self.calls = []
        self.by_id = {7: SeedRecord(7, "receive", "built-in", "", "/var/lib/mysql", 1000.0,
                                      state="running", bytes_done=500, bytes_total=1000,
                                      wire_bytes=300, data_bytes=520, resumes=2, resent_bytes=64, streams=3)}

    async def receive(self, seed_id):
        self.calls.append(("receive", seed_id))

    async def send(self, host, seed_id):
        self.calls.append(("send", host, seed_id))

    async def abort(self, seed_id):
        self.calls.append(("abort", seed_id))

    async def throttle(self, seed_id, rate):
        self.calls.append(("throttle", seed_id, rate))

    def record(self, seed_id):
        return self.by_id[seed_id]

    def now(self):
        return 1010.0  # ten seconds after seed 7 started

    def records(self, limit=None):
        return list(self.by_id.values())[:limit]

    async def post_copy(self, source_host):
        raise Conflict("seed 7 is failed")  # the manager checks before anything runs


class SeedApiTests(SynchronousTestCase):
    """The seed routes pass valid calls to the manager, refuse hostile values and report progress."""

    def setUp(self):
        self.seeds = RecordingSeeds()
        api = SeedAPI(self.seeds)
        routes = [
            Route("GET", "/api/receive-mysql-seed-data/:seedId", api.receive),
            Route("GET", "/api/send-mysql-seed-data/:targetHost/:seedId", api.send),
            Route("GET", "/api/abort-seed/:seedId", api.abort),
            Route("GET", "/api/seed-throttle/:seedId", api.throttle),
            Route("GET", "/api/seed-status/:seedId", api.status),
            Route("GET", "/api/post-copy", api.post_copy),
            Route("GET", "/api/seeds", api.seeds),
        ]
        self.client = StubTreq(ApiResource(routes, Guard(token=Token(TOKEN)), Clock()))

    def get(self, path):
        response = self.successResultOf(self.client.get("http://agent" + path, params={"token": TOKEN}))
        return response.code, json.loads(self.successResultOf(self.client.content(response)))

    def test_valid_calls_reach_the_manager(self):
        self.assertEqual(self.get("/api/receive-mysql-seed-data/12"), (200, True))
        self.assertEqual(self.get("/api/send-mysql-seed-data/db-2.example.com/12"), (200, True))
        self.assertEqual(self.get("/api/send-mysql-seed-data/127.0.0.2/13"), (200, True))
        self.assertEqual(self.get("/api/seed-throttle/12?bytesPerSecond=4194304"), (200, True))
        self.assertEqual(self.get("/api/seed-throttle/12?bytesPerSecond=0"), (200, True))
        self.assertEqual(self.seeds.calls, [("receive", 12), ("send", "db-2.example.com", 12),
                                            ("send", "127.0.0.2", 13), ("throttle", 12, 4194304),
                                            ("throttle", 12, 0)])

    def test_hostile_values_get_400_and_change_nothing(self):
        def quoted(value):
            return urllib.parse.quote(value, safe="")

        paths = [f"/api/{route}/{quoted(value)}" for value in NOT_SEED_IDS
                 for route in ("receive-mysql-seed-data", "abort-seed", "seed-status", "send-mysql-seed-data/db2")]
        paths += [f"/api/send-mysql-seed-data/{quoted(value)}/5" for value in HOSTILE]
        paths += [f"/api/seed-throttle/{quoted(value)}?bytesPerSecond=1000000" for value in NOT_SEED_IDS]
        paths += [f"/api/seed-throttle/5?bytesPerSecond={quoted(value)}" for value in
                  ["1;touch /tmp/x", "$(id)", "1\nid", "-1", "1.5", "4M", " 1", "", "99999999999999999999"]]
        paths += ["/api/seed-throttle/5"]
        for path in paths:
            with self.subTest(path=path):
                code, body = self.get(path)
                self.assertIn(code, (400, 404), (path, body))
                self.assertEqual(body["Code"], "ERROR")
        self.assertEqual(self.seeds.calls, [])

    def test_status_gives_progress_and_eta(self):
        code, body = self.get("/api/seed-status/7")
        self.assertEqual(code, 200)
        self.assertEqual((body["State"], body["Completed"], body["BytesDone"], body["BytesTotal"]),
                         ("running", False, 500, 1000))
        self.assertEqual((body["BytesPerSecond"], body["EtaSeconds"]), (50, 10))
        self.assertIsNone(body["MaxBytesPerSecond"])  # a receive: the source paces
        self.assertEqual((body["WireBytes"], body["DataBytes"], body["CompressionRatio"]), (300, 520, 1.73))
        self.assertEqual((body["Resumes"], body["ResentBytes"], body["Streams"]), (2, 64, 3))
        self.assertEqual(body["StartedAt"], "1970-01-01T00:16:40+00:00")

    def test_seeds_lists_each_as_seed_status_shows_it(self):
        code, body = self.get("/api/seeds")
        self.assertEqual((code, body), (200, [self.get("/api/seed-status/7")[1]]))

    def test_post_copy_refused_after_a_failed_seed(self):
        code, body = self.get("/api/post-copy/?sourceHost=db1")
        self.assertEqual((code, body["Message"]), (409, "seed 7 is failed"))
        self.assertEqual(self.seeds.calls, [])
