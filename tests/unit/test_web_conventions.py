"""HTTP conventions of the API core (contract A.1, "Our rules" 2, 5 and 6), in memory with StubTreq."""

import base64
import gzip
import json

from treq.testing import RequestTraversalAgent, StubTreq
from twisted.web.client import readBody
from twisted.web.http_headers import Headers
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from orchagent.errors import AgentError, Conflict, InvalidInput, NotFound
from orchagent.token import Token
from orchagent.web.resource import ApiResource, Guard, Response
from orchagent.web.routes import Route
from tests.support.routes import raising

TOKEN = "ab" * 32


async def echo(req):
    return {"params": dict(req.params), "lv": req.arg("lv"), "html": "<&>", "float": 50.0, "pct": 3.2699999809265137}


ROUTES = (
    Route("GET", "/api/hostname", echo, token=False),
    Route("GET", "/api/echo/:a/:b", echo),
    Route("GET", "/api/mountlv", echo),
    Route("POST", "/api/apply", echo),
    Route("GET", "/api/bad-input", raising(InvalidInput("lv must be a logical volume"))),
    Route("GET", "/api/missing", raising(NotFound("no such seed 7"))),
    Route("GET", "/api/busy", raising(Conflict("MySQL is running"))),
    Route("GET", "/api/agent-error", raising(AgentError("datadir unknown"))),
    Route("GET", "/api/crash", raising(ZeroDivisionError("secret internals"))),
    Route("GET", "/api/status", lambda req: _coro(Response("BAD", 500)), token=False),
)


async def _coro(value):
    return value


class ConventionTests(SynchronousTestCase):
    """Every route follows the web conventions: Go-compatible JSON, the error envelope, auth, gzip, methods."""

    def setUp(self):
        self.guard = Guard(token=Token(TOKEN))

    def client(self, guard=None):
        return StubTreq(ApiResource(ROUTES, guard or self.guard, Clock()))

    def call(self, path, method="GET", headers=None, token=True, guard=None, data=None):
        client = self.client(guard)
        url = "http://agent" + path
        if token:
            url += ("&" if "?" in url else "?") + "token=" + TOKEN
        response = self.successResultOf(client.request(method, url, headers=headers, data=data))
        body = self.successResultOf(client.content(response))
        return response, body

    def test_json_is_compact_go_escaped_and_whole_floats_are_integers(self):
        response, body = self.call("/api/echo/x/y?lv=/dev/vg0/snap1")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json; charset=UTF-8"])
        self.assertEqual(
            body,
            b'{"params":{"a":"x","b":"y"},"lv":"/dev/vg0/snap1","html":"\\u003c\\u0026\\u003e",'
            b'"float":50,"pct":3.2699999809265137}',
        )

    def test_trailing_slash_matches(self):
        response, body = self.call("/api/mountlv/?lv=/dev/vg/x")
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body)["lv"], "/dev/vg/x")

    def test_params_are_decoded_segments(self):
        _, body = self.call("/api/echo/a%20b/c")
        self.assertEqual(json.loads(body)["params"], {"a": "a b", "b": "c"})
        response, _ = self.call("/api/echo/a%2Fb/c")  # a decoded '/' never lands in a parameter
        self.assertEqual(response.code, 404)

    def test_head_on_get_routes(self):
        response, body = self.call("/api/hostname", method="HEAD", token=False)
        self.assertEqual(response.code, 200)
        self.assertEqual(body, b"")

    def test_unknown_path_is_404_envelope(self):
        response, body = self.call("/api/nosuch")
        self.assertEqual(response.code, 404)
        self.assertEqual(json.loads(body), {"Code": "ERROR", "Message": "no such API path: /api/nosuch", "Details": None})

    def test_wrong_method_is_405_with_allow(self):
        response, body = self.call("/api/hostname", method="POST", token=False)
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers.getRawHeaders("allow"), ["GET, HEAD"])
        self.assertEqual(json.loads(body)["Code"], "ERROR")
        response, _ = self.call("/api/apply", method="GET")
        self.assertEqual(response.headers.getRawHeaders("allow"), ["POST"])

    def raw_get(self, path, headers):
        """Through a bare Agent: treq itself would ask for gzip and decode it."""
        agent = RequestTraversalAgent(ApiResource(ROUTES, self.guard, Clock()))
        d = agent.request(b"GET", b"http://agent" + path + b"?token=" + TOKEN.encode(), Headers(headers))
        response = self.successResultOf(d)
        body = self.successResultOf(readBody(response))
        return response, body

    def test_gzip_when_asked(self):
        response, body = self.raw_get(b"/api/echo/x/y", {b"Accept-Encoding": [b"gzip, deflate"]})
        self.assertEqual(response.headers.getRawHeaders(b"content-encoding"), [b"gzip"])
        self.assertEqual(response.headers.getRawHeaders(b"vary"), [b"Accept-Encoding"])
        self.assertEqual(json.loads(gzip.decompress(body))["params"], {"a": "x", "b": "y"})
        response, body = self.raw_get(b"/api/echo/x/y", {})
        self.assertIsNone(response.headers.getRawHeaders(b"content-encoding"))
        self.assertEqual(json.loads(body)["params"], {"a": "x", "b": "y"})

    def test_errors_use_the_envelope_with_honest_codes(self):
        for path, code, message in [
            ("/api/bad-input", 400, "lv must be a logical volume"),
            ("/api/missing", 404, "no such seed 7"),
            ("/api/busy", 409, "MySQL is running"),
            ("/api/agent-error", 500, "datadir unknown"),
        ]:
            response, body = self.call(path)
            self.assertEqual((response.code, json.loads(body)), (code, {"Code": "ERROR", "Message": message, "Details": None}))

    def test_internal_errors_are_500_without_traceback(self):
        response, body = self.call("/api/crash")
        self.assertEqual(response.code, 500)
        self.assertNotIn(b"secret internals", body)
        self.assertNotIn(b"Traceback", body)
        self.assertIn(b"internal error (ZeroDivisionError)", body)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_status_response_with_code(self):
        response, body = self.call("/api/status", token=False)
        self.assertEqual((response.code, body), (500, b'"BAD"'))

    def test_missing_or_wrong_token_is_401_and_never_echoed(self):
        for path in ("/api/echo/x/y", "/api/echo/x/y?token=" + "cd" * 32):
            response, body = self.call(path, token=False)
            self.assertEqual(response.code, 401)
            self.assertEqual(json.loads(body)["Code"], "ERROR")
            self.assertNotIn(TOKEN.encode(), body)
            self.assertNotIn(b"cdcd", body)

    def test_token_routes_do_not_run_without_token(self):
        calls = []

        async def record(req):
            calls.append(req)
            return True

        client = StubTreq(ApiResource([Route("GET", "/api/mysql-stop", record)], self.guard, Clock()))
        response = self.successResultOf(client.get("http://agent/api/mysql-stop"))
        self.assertEqual((response.code, calls), (401, []))

    def test_token_header(self):
        guard = Guard(token=Token(TOKEN), token_header="X-Orchagent-Token")
        response, _ = self.call("/api/echo/x/y", headers={"X-Orchagent-Token": TOKEN}, token=False, guard=guard)
        self.assertEqual(response.code, 200)
        response, _ = self.call("/api/echo/x/y", guard=guard)  # header absent: query parameter counts
        self.assertEqual(response.code, 200)
        # a present but wrong header does not fall back to the query parameter (V1)
        response, _ = self.call("/api/echo/x/y", headers={"X-Orchagent-Token": "nope"}, guard=guard)
        self.assertEqual(response.code, 401)

    def test_basic_auth_wraps_every_route(self):
        guard = Guard(token=Token(TOKEN), basic_auth=("dba", "s3cret"))
        response, body = self.call("/api/hostname", token=False, guard=guard)
        self.assertEqual((response.code, body), (401, b"Not Authorized\n"))
        self.assertEqual(response.headers.getRawHeaders("www-authenticate"), ['Basic realm="Authorization Required"'])
        good = {"Authorization": "Basic " + base64.b64encode(b"dba:s3cret").decode()}
        bad = {"Authorization": "Basic " + base64.b64encode(b"dba:wrong").decode()}
        self.assertEqual(self.call("/api/hostname", token=False, guard=guard, headers=good)[0].code, 200)
        self.assertEqual(self.call("/api/hostname", token=False, guard=guard, headers=bad)[0].code, 401)
        self.assertEqual(self.call("/api/hostname", token=False, guard=guard,
                                   headers={"Authorization": "Basic !!!"})[0].code, 401)

    def test_client_certificate_required_on_plain_connection_when_ous_configured(self):
        guard = Guard(token=Token(TOKEN), valid_ous=frozenset({"dba"}))
        response, body = self.call("/api/echo/x/y", guard=guard)
        self.assertEqual((response.code, body), (401, b"No TLS\n"))
        # the status endpoint is exempt unless StatusOUVerify, matched exactly, not as a substring
        self.assertEqual(self.call("/api/status", token=False, guard=guard)[0].code, 500)
        response, _ = self.call("/api/echo/x/y?x=/api/status", guard=guard)
        self.assertEqual(response.code, 401)
        strict = Guard(token=Token(TOKEN), valid_ous=frozenset({"dba"}), status_ou_verify=True)
        self.assertEqual(self.call("/api/status", token=False, guard=strict)[1], b"No TLS\n")
