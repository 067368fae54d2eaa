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
from typing import Any, Iterable, Mapping, Protocol
from urllib.parse import parse_qs, unquote

import attrs
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from orchagent import logs, tls
from orchagent.commands import CommandFailed, CommandTimedOut
from orchagent.errors import AgentError, Busy, Conflict, InvalidInput, NotFound
from orchagent.token import Token
from orchagent.web.rendering import error_envelope, render_json
from orchagent.web.routes import Route

log = logs.logger(__name__)

#: Refusals worth a warning (with the client's address; 404/405/400 are a client's own business).
_REFUSED = frozenset((401, 403, 413, 429, 503))

#: Most specific first: the first class an exception is an instance of decides the status.
_STATUS_BY_ERROR = (
    (InvalidInput, 400),
    (NotFound, 404),
    (Conflict, 409),
    (Busy, 503),
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
    """A handler result that needs a status other than 200 (the status endpoint's ``"BAD"``), or
    that is not JSON (``content_type`` set: ``body`` is sent as these bytes)."""

    body: Any
    code: int = 200
    content_type: bytes | None = None


@attrs.frozen
class Answered:
    """One answered request, as the observers (metrics, audit log) see it."""

    at: float  # wall time of the answer
    client: str  # the peer's address
    peer_subject: str | None  # the TLS client certificate's subject, when one was presented
    method: str
    route: Route | None  # None when no route matched
    params: Mapping[str, str]
    query: Mapping[str, list[str]]  # without the token
    code: int
    message: str  # the error's message; "" on success
    seconds: float


class Observer(Protocol):
    def request_done(self, answered: Answered) -> None: ...


@attrs.frozen
class _HttpError(Exception):
    """A failure decided by the web layer itself (auth, routing)."""

    code: int
    body: bytes
    content_type: bytes = b"application/json; charset=UTF-8"
    headers: Mapping[bytes, bytes] = attrs.field(factory=dict)
    message: str = ""  # the reason, for the log and the observers (audit log)
    route: Route | None = None  # the route it was refused on, when one matched


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
            message = _too_large(self.route)
            return _HttpError(413, render_json(error_envelope(message)), message=message, route=self.route)
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

    def __init__(self, routes: Iterable[Route], guard: Guard, clock: Any, observers: Iterable[Observer] = ()):
        super().__init__()
        self._routes = tuple(routes)
        self._guard = guard
        self._clock = clock
        self._observers = tuple(observers)

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
        started = self._clock.seconds()
        head = RequestHead.of(request)
        route, params, message = None, {}, ""
        try:
            route, params = self._authorize(head)
            result = await route.handler(_api_request(request, params))
            response = result if isinstance(result, Response) else Response(result)
            code, content_type, headers = response.code, response.content_type, {}
            body = response.body if content_type else render_json(response.body)
            content_type = content_type or b"application/json; charset=UTF-8"
        except _HttpError as e:
            code, body, content_type, headers, message = e.code, e.body, e.content_type, e.headers, e.message
            route = e.route or route
        except Exception as e:
            code, message, headers = _failure_response(e)
            body, content_type = render_json(error_envelope(message)), b"application/json; charset=UTF-8"
        self._answered(head, route, params, code, message, started)
        if not (request.finished or getattr(request, "_disconnected", False)):
            _write(request, code, body, content_type, headers)

    def admission(self, head: RequestHead) -> Admission:
        """The same routing and authorization as a full request, decided from its head alone."""
        try:
            return Admission(route=self._authorize(head)[0])
        except _HttpError as e:
            return Admission(refused=e)

    def refused_at_the_edge(self, head: RequestHead, refusal: _HttpError, started: float) -> None:
        """A request :mod:`orchagent.web.site` answered from its head: logged and observed as any other."""
        self._answered(head, refusal.route, {}, refusal.code, refusal.message, started)

    def _authorize(self, head: RequestHead) -> tuple[Route, dict[str, str]]:
        """Basic auth, routing, client certificate, token: in that order."""
        guard = self._guard
        if guard.basic_auth and not _basic_auth_ok(head, *guard.basic_auth):
            raise _HttpError(401, b"Not Authorized\n", b"text/plain; charset=utf-8",
                             {b"WWW-Authenticate": b'Basic realm="Authorization Required"'}, "basic auth failed")
        route, params = self._match(head)
        try:
            if guard.valid_ous is not None and (route.token or guard.status_ou_verify):
                _check_client_ou(head, guard.valid_ous)
            if route.token and not guard.token.matches(_presented_token(head, guard.token_header)):
                message = "Invalid token: pass the agent's token as ?token=<token>"
                raise _HttpError(401, render_json(error_envelope(message)), message=message)
        except _HttpError as e:
            raise attrs.evolve(e, route=route) from None
        return route, params

    def _answered(self, head: RequestHead, route: Route | None, params: Mapping[str, str], code: int,
                  message: str, started: float) -> None:
        """Every answer ends here: refusals and failures are warned about, the observers told."""
        _log_refusal(head, code, message)
        if not self._observers:
            return
        now = self._clock.seconds()
        answered = Answered(
            at=now, client=_client(head), peer_subject=tls.peer_subject(head.transport),
            method=head.method.decode("ascii", "replace"), route=route, params=params,
            query={key: values for key, values in _decoded(head.args).items() if key != "token"},
            code=code, message=message, seconds=now - started)
        for observer in self._observers:
            try:
                observer.request_done(answered)
            except Exception:
                log.failure("observing a request failed", None)

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
            message = f"method {method} not allowed; use {allow}"
            raise _HttpError(405, render_json(error_envelope(message)), headers={b"Allow": allow.encode("ascii")},
                             message=message)
        message = f"no such API path: {path}"
        raise _HttpError(404, render_json(error_envelope(message)), message=message)


def _decoded(args: Mapping[bytes, list[bytes]]) -> dict[str, list[str]]:
    return {key.decode("utf-8", "replace"): [v.decode("utf-8", "replace") for v in values]
            for key, values in args.items()}


def _client(head: RequestHead) -> str:
    peer = head.transport.getPeer() if head.transport is not None else None
    return str(getattr(peer, "host", peer))


def _api_request(request, params: dict[str, str]) -> ApiRequest:
    length = request.getHeader(b"content-length")
    return ApiRequest(params=params, query=_decoded(request.args), body=request.content,
                      content_length=int(length) if length and length.isdigit() else None)


def _failure_response(error: Exception) -> tuple[int, str, dict[bytes, bytes]]:
    """Status, message and extra headers (``Retry-After`` for Busy) of a failure."""
    for error_class, code in _STATUS_BY_ERROR:
        if isinstance(error, error_class):
            headers = {b"Retry-After": b"%d" % error.retry_after} if isinstance(error, Busy) else {}
            return code, str(error), headers
    log.failure("internal error", None)
    return 500, f"internal error ({type(error).__name__}); see the agent's log", {}


def _log_refusal(head: RequestHead, code: int, reason: str) -> None:
    """Refusals and server-side failures at WARN: who asked for what (the path without its
    query, so never the token) and why (messages are free of secrets)."""
    if code not in _REFUSED and code < 500:
        return
    log.warn("{method} {path} from {client} -> {code}: {reason}",
             method=head.method.decode("ascii", "replace"), path=head.path[:200].decode("utf-8", "replace"),
             client=_client(head), code=code, reason=reason[:500].strip())


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
        raise _HttpError(401, b"No TLS\n", b"text/plain; charset=utf-8", message="no client certificate")
    if not ous & valid_ous:
        raise _HttpError(401, b"Invalid OU\n", b"text/plain; charset=utf-8", message="client certificate OU not allowed")


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

