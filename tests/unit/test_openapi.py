"""The OpenAPI document is the route table's, served without a token, and the README names every route."""

import json
import os
import re

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from orchagent.token import Token
from orchagent.web.openapi import OPENAPI_PATH, with_openapi
from orchagent.web.resource import ApiResource, Guard
from orchagent.web.routes import route_table
from testbed.agent import REPO


class AnyHandler:
    """Every attribute is a handler answering True: the table is what is under test."""

    def __getattr__(self, name):
        async def handler(req):
            return True
        return handler


def routes():
    return with_openapi(route_table(AnyHandler(), AnyHandler(), AnyHandler(), AnyHandler(), "/api/status", 1024))


class OpenApiTests(SynchronousTestCase):
    """Every served route is described; the description cannot drift from the table."""

    def served_document(self):
        client = StubTreq(ApiResource(routes(), Guard(token=Token("ab" * 32)), Clock()))
        response = self.successResultOf(client.get("http://agent" + OPENAPI_PATH))
        self.assertEqual(response.code, 200)
        return json.loads(self.successResultOf(client.content(response)))

    def test_every_route_is_described_with_its_parameters_and_token(self):
        document = self.served_document()
        self.assertEqual(document["openapi"], "3.0.3")
        table = routes()
        described = [(path, method) for path, operations in document["paths"].items() for method in operations]
        self.assertEqual(len(described), len(table))
        for route in table:
            path = re.sub(r":([A-Za-z]+)", r"{\1}", route.pattern)
            operation = document["paths"][path][route.method.lower()]
            self.assertTrue(operation["summary"], route.pattern)
            names = [(p["in"], p["name"]) for p in operation.get("parameters", [])]
            self.assertEqual(names, [("path", n) for n in re.findall(r":([A-Za-z]+)", route.pattern)]
                             + [("query", n) for n in route.query])
            self.assertEqual(operation["security"], [{"token": []}] if route.token else [], route.pattern)
        self.assertIn("/api/seed-status/{seedId}", document["paths"])
        self.assertEqual(len({op["operationId"] for ops in document["paths"].values() for op in ops.values()}),
                         len(table))

    def test_the_readme_names_every_route(self):
        with open(os.path.join(REPO, "README.md")) as f:
            readme = f.read()
        missing = [route.pattern for route in routes() if route.pattern not in readme]
        self.assertEqual(missing, [])
