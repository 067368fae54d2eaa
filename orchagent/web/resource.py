"""The one twisted.web resource behind every route.

``render`` runs the matched handler as a coroutine (``Deferred.fromCoroutine``) and returns
``NOT_DONE_YET``; every exception goes through :func:`_failure_response`, which turns it into
V1's error envelope with an honest status code.  Tracebacks are logged, never sent.
"""

from __future__ import annotations

import base64
import gzip
import hmac
from typing import Any, Iterable, Mapping
from urllib.parse import unquote

import attrs
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from orchagent import logs, tls
from orchagent.errors import AgentError, Busy, Conflict, InvalidInput, NotFound
from orchagent.process import CommandFailed, CommandTimedOut
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
            route, params = self._authorize(request)
            result = await route.handler(_api_request(request, params))
            response = result if isinstance(result, Response) else Response(result)
            code, body = response.code, render_json(response.body)
            content_type, headers = b"application/json; charset=UTF-8", {}
        except _HttpError as e:
            code, body, content_type, headers = e.code, e.body, e.content_type, e.headers
            _log_refusal(request, code, body.decode("utf-8", "replace"))
        except Exception as e:
            code, message, headers = _failure_response(e)
            body, content_type = render_json(error_envelope(message)), b"application/json; charset=UTF-8"
            _log_refusal(request, code, message)
        if request.finished or getattr(request, "_disconnected", False):
            return
        _write(request, code, body, content_type, headers)

    def _authorize(self, request) -> tuple[Route, dict[str, str]]:
        """Basic auth, routing, client certificate, token: in that order."""
        guard = self._guard
        if guard.basic_auth and not _basic_auth_ok(request, *guard.basic_auth):
            raise _HttpError(401, b"Not Authorized\n", b"text/plain; charset=utf-8",
                             {b"WWW-Authenticate": b'Basic realm="Authorization Required"'})
        route, params = self._match(request)
        if guard.valid_ous is not None and (route.token or guard.status_ou_verify):
            _check_client_ou(request, guard.valid_ous)
        if route.token and not guard.token.matches(_presented_token(request, guard.token_header)):
            raise _HttpError(401, render_json(error_envelope(
                "Invalid token: pass the agent's token as ?token=<token>")))
        return route, params

    def _match(self, request) -> tuple[Route, dict[str, str]]:
        path = unquote(request.path.decode("utf-8", "replace"))
        if len(path) > 1 and path.endswith("/"):
            path = path[:-1]  # every route also matches with one trailing slash, as V1
        method = request.method.decode("ascii", "replace")
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


def _failure_response(error: Exception) -> tuple[int, str, dict[bytes, bytes]]:
    """Status, message and extra headers (``Retry-After`` for Busy) of a failure."""
    for error_class, code in _STATUS_BY_ERROR:
        if isinstance(error, error_class):
            headers = {b"Retry-After": b"%d" % error.retry_after} if isinstance(error, Busy) else {}
            return code, str(error), headers
    log.failure("internal error", None)
    return 500, f"internal error ({type(error).__name__}); see the agent's log", {}


def _log_refusal(request, code: int, reason: str) -> None:
    """Refusals and server-side failures at WARN: who asked for what (the path without its
    query, so never the token) and why (messages are free of secrets)."""
    if code not in _REFUSED and code < 500:
        return
    client = request.getClientAddress()
    log.warn("{method} {path} from {client} -> {code}: {reason}",
             method=request.method.decode("ascii", "replace"),
             path=request.path[:200].decode("utf-8", "replace"),
             client=getattr(client, "host", client), code=code, reason=reason[:500].strip())


def _presented_token(request, header: str) -> str | None:
    """The header wins when configured and present; otherwise ``?token=`` (V1)."""
    if header:
        value = request.getHeader(header)
        if value:
            return value
    values = request.args.get(b"token")
    return values[0].decode("utf-8", "replace") if values else None


def _basic_auth_ok(request, user: str, password: str) -> bool:
    header = request.getHeader("authorization") or ""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        presented = base64.b64decode(encoded, validate=True)
    except ValueError:
        return False
    return hmac.compare_digest(presented, f"{user}:{password}".encode("utf-8"))


def _check_client_ou(request, valid_ous: frozenset[str]) -> None:
    """The TLS layer has verified the chain (if any); here the leaf must carry an allowed OU."""
    ous = tls.peer_ous(request.channel.transport)
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

