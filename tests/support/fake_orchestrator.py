"""The one stand-in for orchestrator's agents port (``submit-agent``, ``agent-ping``): what a
registering agent talks to.  (The orchestrator that drives agents is ``testbed.orchestrator``.)"""

from __future__ import annotations

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site


class FakeOrchestrator(Resource):
    """Records every path; answers with ``self.code`` / ``self.body``, or never when ``hang``."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.paths: list[str] = []
        self.code = 200
        self.body = b'"OK"'
        self.hang = False

    def render_GET(self, request):
        self.paths.append(request.path.decode())
        if self.hang:
            return NOT_DONE_YET
        request.setResponseCode(self.code)
        return self.body

    def listen(self, testcase, reactor, context=None) -> str:
        """Serve on 127.0.0.1 (TLS with ``context``) until ``testcase`` ends; the base URL."""
        site = Site(self)
        port = (reactor.listenSSL(0, site, context, interface="127.0.0.1") if context
                else reactor.listenTCP(0, site, interface="127.0.0.1"))
        testcase.addCleanup(port.stopListening)
        return f"{'https' if context else 'http'}://127.0.0.1:{port.getHost().port}"
