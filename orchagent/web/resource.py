"""The one twisted.web resource behind every route.

``render`` runs the matched handler as a coroutine (``Deferred.fromCoroutine``) and returns
``NOT_DONE_YET``; every exception goes through :func:`_failure_response`, which turns it into
V1's error envelope with an honest status code.  Tracebacks are logged, never sent.

Routing and authorization look only at a :class:`RequestHead` (request line, headers, transport),
so :mod:`orchagent.web.site` runs the same checks through :meth:`ApiResource.admission` before a
request body is read.
"""

from __future__ import annotations

import base64
import gzip
import hmac
from typing import Any, Iterable, Mapping
from urllib.parse import parse_qs, unquote

import attrs
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from orchagent import logs, tls
from orchagent.errors import AgentError, Conflict, InvalidInput, NotFound
from orchagent.process import CommandFailed, CommandTimedOut
from orchagent.token import Token
from orchagent.web.rendering import error_envelope, render_json
from orchagent.web.routes import Route

log = logs.logger(__name__)

#: Most specific first: the first class an exception is an instance of decides the status.
_STATUS_BY_ERROR = (
    (InvalidInput, 400),
    (NotFound, 404),
    (Conflict, 409),
    (CommandTimedOut, 504),
    (CommandFailed, 502),
    (AgentError, 500),
)


@attrs.frozen
class ApiRequest:
    """What a handler may look at: path parameters, query arguments and the body."""

    params: Mapping[str, str]
    query: Mapping[str, list[str]]
    body: Any  # a binary file object (twisted's request.content), or None
    content_length: int | None

    def arg(self, name: str) -> str | None:
        """The first value of query argument ``name``, or None when absent."""
        values = self.query.get(name)
        return values[0] if values else None


@attrs.frozen
class Response:
    """A handler result that needs a status other than 200 (the status endpoint's ``"BAD"``)."""

    body: Any
    code: int = 200


@attrs.frozen
class _HttpError(Exception):
    """A failure decided by the web layer itself (auth, routing)."""

    code: int
    body: bytes
    content_type: bytes = b"application/json; charset=UTF-8"
    headers: Mapping[bytes, bytes] = attrs.field(factory=dict)


@attrs.frozen
class RequestHead:
    """What routing and authorization look at: all there is once the headers are in."""

    method: bytes
    path: bytes
    args: Mapping[bytes, list[bytes]]
    headers: Any  # twisted.web.http_headers.Headers
    transport: Any

    @classmethod
    def parse(cls, method: bytes, uri: bytes, headers: Any, transport: Any) -> RequestHead:
        """As twisted.web.http.Request.requestReceived splits the URI (only the query gives args)."""
        path, _, query = uri.partition(b"?")
        return cls(method, path, parse_qs(query, keep_blank_values=True), headers, transport)

    @classmethod
    def of(cls, request) -> RequestHead:
        return cls.parse(request.method, request.uri, request.requestHeaders, request.channel.transport)

    def header(self, name: str | bytes) -> bytes | None:
        values = self.headers.getRawHeaders(name.encode("ascii") if isinstance(name, str) else name)
        return values[-1] if values else None


@attrs.frozen
class Admission:
    """What a request's head decides before its body is read: a refusal, or the route's body limit."""

    refused: _HttpError | None = None
    route: Route | None = None

    def refusal(self, body_bytes: int | None) -> _HttpError | None:
        """Why a request with ``body_bytes`` of body (announced or counted so far; None for a
        chunked body not yet counted) is refused, or None."""
        if self.refused is not None:
            return self.refused
        limit = self.route.max_body
        if (limit == 0) if body_bytes is None else (body_bytes > limit):
            return _HttpError(413, render_json(error_envelope(_too_large(self.route))))
        return None


@attrs.frozen
class Guard:
    """Who may call: the token, optional basic auth and optional client-certificate OUs."""

    token: Token
    token_header: str = ""
    basic_auth: tuple[str, str] | None = None
    valid_ous: frozenset[str] | None = None  # None: no client certificate check
    status_ou_verify: bool = False


class ApiResource(Resource):
    isLeaf = True

    def __init__(self, routes: Iterable[Route], guard: Guard, clock: Any):
        super().__init__()
        self._routes = tuple(routes)
        self._guard = guard
        self._clock = clock

    def render(self, request):
        started = self._clock.seconds()
        d = Deferred.fromCoroutine(self._respond(request))
        d.addErrback(lambda f: log.failure("responding to {path}", f, path=request.path))
        d.addBoth(lambda _: log.debug(
            "{method} {path} -> {code} in {ms:.1f} ms",
            method=request.method.decode("ascii", "replace"),
            path=request.path.decode("ascii", "replace"),
            code=request.code,
            ms=(self._clock.seconds() - started) * 1000,
        ))
        return NOT_DONE_YET

    async def _respond(self, request) -> None:
        try:
            route, params = self._authorize(RequestHead.of(request))
            result = await route.handler(_api_request(request, params))
            response = result if isinstance(result, Response) else Response(result)
            code, body = response.code, render_json(response.body)
            content_type, headers = b"application/json; charset=UTF-8", {}
        except _HttpError as e:
            code, body, content_type, headers = e.code, e.body, e.content_type, e.headers
        except Exception as e:
            code, message = _failure_response(e)
            body, content_type, headers = render_json(error_envelope(message)), b"application/json; charset=UTF-8", {}
        if request.finished or getattr(request, "_disconnected", False):
            return
        _write(request, code, body, content_type, headers)

    def admission(self, head: RequestHead) -> Admission:
        """The same routing and authorization as a full request, decided from its head alone."""
        try:
            return Admission(route=self._authorize(head)[0])
        except _HttpError as e:
            return Admission(refused=e)

    def _authorize(self, head: RequestHead) -> tuple[Route, dict[str, str]]:
        """Basic auth, routing, client certificate, token: in that order."""
        guard = self._guard
        if guard.basic_auth and not _basic_auth_ok(head, *guard.basic_auth):
            raise _HttpError(401, b"Not Authorized\n", b"text/plain; charset=utf-8",
                             {b"WWW-Authenticate": b'Basic realm="Authorization Required"'})
        route, params = self._match(head)
        if guard.valid_ous is not None and (route.token or guard.status_ou_verify):
            _check_client_ou(head, guard.valid_ous)
        if route.token and not guard.token.matches(_presented_token(head, guard.token_header)):
            raise _HttpError(401, render_json(error_envelope(
                "Invalid token: pass the agent's token as ?token=<token>")))
        return route, params

    def _match(self, head: RequestHead) -> tuple[Route, dict[str, str]]:
        path = unquote(head.path.decode("utf-8", "replace"))
        if len(path) > 1 and path.endswith("/"):
            path = path[:-1]  # every route also matches with one trailing slash, as V1
        method = head.method.decode("ascii", "replace")
        allowed = []
        for route in self._routes:
            params = route.match(path)
            if params is None:
                continue
            if route.accepts(method):
                return route, params
            allowed.append(route.method)
        if allowed:
            allow = ", ".join(sorted(set(allowed) | ({"HEAD"} if "GET" in allowed else set())))
            raise _HttpError(405, render_json(error_envelope(f"method {method} not allowed; use {allow}")),
                             headers={b"Allow": allow.encode("ascii")})
        raise _HttpError(404, render_json(error_envelope(f"no such API path: {path}")))


def _api_request(request, params: dict[str, str]) -> ApiRequest:
    query = {
        key.decode("utf-8", "replace"): [v.decode("utf-8", "replace") for v in values]
        for key, values in request.args.items()
    }
    length = request.getHeader(b"content-length")
    return ApiRequest(params=params, query=query, body=request.content,
                      content_length=int(length) if length and length.isdigit() else None)


def _failure_response(error: Exception) -> tuple[int, str]:
    for error_class, code in _STATUS_BY_ERROR:
        if isinstance(error, error_class):
            return code, str(error)
    log.failure("internal error", None)
    return 500, f"internal error ({type(error).__name__}); see the agent's log"


def _too_large(route: Route) -> str:
    if route.max_body == 0:
        return f"{route.method} {route.pattern} takes no request body"
    return f"the request body must be at most {route.max_body} bytes (ApplyRelaylogMaxBytes)"


def _presented_token(head: RequestHead, header: str) -> str | None:
    """The header wins when configured and present; otherwise ``?token=`` (V1)."""
    if header:
        value = head.header(header)
        if value:
            return value.decode("utf-8", "replace")
    values = head.args.get(b"token")
    return values[0].decode("utf-8", "replace") if values else None


def _basic_auth_ok(head: RequestHead, user: str, password: str) -> bool:
    header = (head.header(b"authorization") or b"").decode("latin-1")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        presented = base64.b64decode(encoded, validate=True)
    except ValueError:
        return False
    return hmac.compare_digest(presented, f"{user}:{password}".encode("utf-8"))


def _check_client_ou(head: RequestHead, valid_ous: frozenset[str]) -> None:
    """The TLS layer has verified the chain (if any); here the leaf must carry an allowed OU."""
    ous = tls.peer_ous(head.transport)
    if ous is None:
        raise _HttpError(401, b"No TLS\n", b"text/plain; charset=utf-8")
    if not ous & valid_ous:
        raise _HttpError(401, b"Invalid OU\n", b"text/plain; charset=utf-8")


def _write(request, code: int, body: bytes, content_type: bytes, headers: Mapping[bytes, bytes]) -> None:
    request.setResponseCode(code)
    request.setHeader(b"content-type", content_type)
    for name, value in headers.items():
        request.setHeader(name, value)
    request.setHeader(b"vary", b"Accept-Encoding")
    if b"gzip" in (request.getHeader(b"accept-encoding") or b"").lower():
        body = gzip.compress(body, compresslevel=6, mtime=0)
        request.setHeader(b"content-encoding", b"gzip")
    request.setHeader(b"content-length", str(len(body)).encode("ascii"))
    request.write(body)
    request.finish()

