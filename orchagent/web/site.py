"""The HTTP edge: what a connection may cost before a handler runs.

* Connections: at most ``max_connections`` open on the listener (HTTPMaxConnections); beyond
  that a new connection is closed at once and the open ones go on.
* Header time: the request line and headers must be in within ``header_timeout`` seconds
  (HTTPHeaderTimeoutSeconds) of the connection being ready for them (opened, or the previous
  response sent), however slowly they trickle in; an idle keep-alive connection ends the same way.
* Bodies: once the headers are in, :meth:`ApiResource.admission` (the routing and authorization
  every request goes through) decides; a refused request (401, 404, 405, or 413 for a body its
  route does not take) is answered at once and the connection closed without reading the body.
  A chunked body is counted as it streams and refused at its route's limit.
"""

from __future__ import annotations

from typing import Any

from twisted.web import http, server

from orchagent.connections import ConnectionCap
from orchagent.web.resource import ApiResource, RequestHead


class EdgeRequest(server.Request):
    """A request that is admitted (or refused) when its headers are in, before its body."""

    _admission = None
    _head = None
    _body_bytes = 0
    _refused = False

    def gotLength(self, length: int | None) -> None:
        if length == 0:
            super().gotLength(length)  # no body to spare: the resource answers as usual
            return
        channel = self.channel
        # The request line is only on the channel until the body is in; Twisted 22.4 and newer keep it there.
        self._head = RequestHead.parse(channel._command, channel._path, self.requestHeaders, channel.transport)
        self._admission = channel.site.resource.admission(self._head)
        if not self._refuse_if_needed(length):
            super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._body_bytes += len(data)
        if self._refuse_if_needed(self._body_bytes):
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self._refused:  # a refused request is answered already, whatever arrives after
            super().requestReceived(command, path, version)

    def _refuse_if_needed(self, body_bytes: int | None) -> bool:
        refusal = self._admission.refusal(body_bytes)
        if refusal is None:
            return False
        self._refused = True
        resource = self.channel.site.resource
        resource.refused_at_the_edge(self._head, refusal, started=self.channel.site.reactor.seconds())
        super().gotLength(0)  # an empty body in memory: nothing is spooled for a refused request
        self.requestHeaders.removeHeader(b"expect")  # no "100 Continue" after the refusal
        headers = {b"Content-Type": refusal.content_type, b"Content-Length": b"%d" % len(refusal.body),
                   b"Connection": b"close", **refusal.headers}
        head = [b"HTTP/1.1 %d %s" % (refusal.code, http.RESPONSES.get(refusal.code, b"Refused"))]
        head += [name + b": " + value for name, value in headers.items()]
        self.channel.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + refusal.body)
        self.channel.loseConnection()  # stops reading: the rest of the body is never taken in
        return True


class ApiChannel(http.HTTPChannel):
    """An HTTP connection with a total deadline for each request's headers."""

    _header_deadline: Any = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._arm_header_deadline()

    def allHeadersReceived(self) -> None:
        self._cancel_header_deadline()
        super().allHeadersReceived()

    def requestDone(self, request) -> None:
        self._arm_header_deadline()  # before: the next pipelined request may be parsed right away
        super().requestDone(request)

    def connectionLost(self, reason) -> None:
        self._cancel_header_deadline()
        self.factory.connections.closed()
        super().connectionLost(reason)

    def _arm_header_deadline(self) -> None:
        self._cancel_header_deadline()
        self._header_deadline = self.callLater(self.factory.header_timeout, self._headers_too_slow)

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None and self._header_deadline.active():
            self._header_deadline.cancel()
        self._header_deadline = None

    def _headers_too_slow(self) -> None:
        # Closing still sends what was written (a slow reader gets the rest of its last response);
        # a peer that reads nothing is aborted after abortTimeout, as Twisted's idle timeout does.
        self.loseConnection()
        self._header_deadline = self.callLater(self.abortTimeout, self.transport.abortConnection)


class ApiSite(server.Site):
    """The API's site: no access log (its lines would carry ``?token=``; ApiResource logs requests
    at debug, without the query), :class:`ApiChannel` connections, :class:`EdgeRequest` requests."""

    protocol = ApiChannel
    requestFactory = EdgeRequest

    def __init__(self, resource: ApiResource, *, reactor: Any, max_connections: int, header_timeout: float):
        super().__init__(resource, reactor=reactor)
        self.connections = ConnectionCap(max_connections, "API listener")
        self.header_timeout = header_timeout

    def buildProtocol(self, addr):
        return self.connections.build(super().buildProtocol, addr)

    def log(self, request) -> None:
        pass
