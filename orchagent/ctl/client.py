"""One agent's API as orchagent-ctl calls it: treq, ``?token=``, one clear line for every failure.

Failures become :class:`CtlError` whose message names the agent (``host:port``) and says what to
do; nothing a caller prints ever carries the token (treq and Twisted quote URLs in their errors,
so every message is passed through :meth:`AgentClient.hide` first).
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any
from urllib.parse import quote

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError, ConnectionRefusedError, DNSLookupError, TimeoutError
from twisted.web.client import ResponseFailed, ResponseNeverReceived

from orchagent.errors import InvalidInput
from orchagent.web import validate

DEFAULT_PORT = 3002
_TOKEN_IN_URL = re.compile(r"token=[^&\s'\"()<>]+")


class CtlError(Exception):
    """A failure shown to the operator as one line (never with a traceback)."""


class HttpStatusError(CtlError):
    """The agent answered, but not with 200; ``message`` is the agent's own explanation."""

    def __init__(self, line: str, status: int, message: str):
        super().__init__(line)
        self.status = status
        self.message = message


@attrs.frozen
class AgentAddress:
    """Where an agent listens: ``host[:port]`` (``[v6]:port`` for IPv6) and the scheme."""

    host: str
    port: int = DEFAULT_PORT
    https: bool = False

    @classmethod
    def parse(cls, text: str, https: bool = False) -> "AgentAddress":
        host, port = text, str(DEFAULT_PORT)
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            if rest:
                if not rest.startswith(":"):
                    raise ValueError(f"{text!r}: expected [IPv6 address]:port")
                port = rest[1:]
        elif text.count(":") == 1:
            host, port = text.split(":")
        try:
            host = validate.host(host, "HOST")
        except InvalidInput as e:
            raise ValueError(str(e)) from None
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
        return cls(host, int(port), https)

    @property
    def base(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.https else 'http'}://{host}:{self.port}"

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class AgentClient:
    """Calls to one agent through an injected treq ``HTTPClient`` (or ``StubTreq``)."""

    def __init__(self, http, address: AgentAddress, token: str, *, timeout: float, clock):
        self._http = http
        self.address = address
        self._token = token
        self._timeout = timeout
        self._clock = clock

    @property
    def hostname(self) -> str:
        """The name other agents reach this one by (a seed's source sends to it)."""
        return self.address.host

    def hide(self, text: str) -> str:
        """``text`` without the token, wherever a library may have quoted it."""
        if self._token:
            text = text.replace(self._token, "<token>")
        return _TOKEN_IN_URL.sub("token=<token>", text)

    async def get(self, path: str, query: tuple[tuple[str, str], ...] = (), token: bool = True) -> Any:
        """GET ``/api/<path>`` and decode the JSON answer; CtlError for anything but a 200 with JSON."""
        params = list(query) + ([("token", self._token)] if token else [])
        url = f"{self.address.base}/api/{quote(path, safe='/')}"
        exchange = Deferred.fromCoroutine(self._exchange(url, params))
        timed_out = []
        timer = self._clock.callLater(self._timeout, lambda: (timed_out.append(True), exchange.cancel()))
        try:
            code, body = await exchange
        except Exception as e:
            if timed_out:  # the cancellation surfaces as whatever the request was doing
                raise CtlError(f"{self.address}: no answer within {self._timeout:g} s (--timeout)") from None
            if _cancelled(e):  # the caller gave up (Ctrl-C)
                raise CancelledError() from None
            raise CtlError(self.hide(f"{self.address}: {_transport_problem(e)}")) from None
        finally:
            if timer.active():
                timer.cancel()
        if code != 200:
            raise self._status_error(path, code, body)
        try:
            return json.loads(body)
        except ValueError:
            raise CtlError(f"{self.address}: {path}: the answer is not JSON: {body[:80]!r}") from None

    async def _exchange(self, url: str, params: list) -> tuple[int, bytes]:
        response = await self._http.get(url, params=params)
        return response.code, await response.content()

    def _status_error(self, path: str, status: int, body: bytes) -> HttpStatusError:
        message = _agent_message(body)
        if status == 401:
            if "token" not in message.lower():  # basic auth, or mutual TLS: "No TLS", "Invalid OU"
                hint = ("the agent wants a client certificate with one of its SSLValidOUs (--cert and --key)"
                        if "TLS" in message or "OU" in message else "the agent refused the call")
            elif not self._token:
                hint = "no token was given: pass --token, --token-file or ORCHAGENT_TOKEN"
            else:
                hint = "the agent refused the token: use the one in its TokenHintFile or TokenFile"
            line = f"{self.address}: {hint} (HTTP 401: {message})"
        else:
            line = f"{self.address}: {path} failed (HTTP {status}): {message}"
        return HttpStatusError(self.hide(line), status, self.hide(message))


def _cancelled(error: Exception) -> bool:
    """A cancelled request fails with CancelledError, or with it wrapped by the HTTP client."""
    if isinstance(error, (ResponseFailed, ResponseNeverReceived)):
        return any(reason.check(CancelledError) for reason in error.reasons)
    return isinstance(error, CancelledError)


def _agent_message(body: bytes) -> str:
    """The V1 envelope's Message, else the body's first line."""
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("Message"), str):
        return document["Message"]
    if isinstance(document, str):
        return document
    text = body.decode("utf-8", "replace").strip()
    return text.splitlines()[0][:200] if text else "(empty answer)"


def _transport_problem(error: Exception) -> str:
    """What went wrong on the way, in words; ResponseFailed wraps the real reasons."""
    if isinstance(error, (ResponseFailed, ResponseNeverReceived)) and error.reasons:
        reason = error.reasons[0].value
        if type(reason).__module__.startswith("OpenSSL"):
            return f"TLS handshake failed ({_openssl_reasons(reason)}); check --https, --ca, --cert and --key"
        return f"the connection failed: {_short(reason)}"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused: is orchagent running and listening there?"
    if isinstance(error, DNSLookupError):
        return "cannot resolve the host name"
    if isinstance(error, TimeoutError):
        return "no connection (timed out)"
    if isinstance(error, ConnectError):
        return f"cannot connect: {_short(error)}"
    return _short(error)


def _openssl_reasons(error: BaseException) -> str:
    """pyOpenSSL errors carry [(library, function, reason), ...]: the reasons say it."""
    entries = error.args[0] if error.args and isinstance(error.args[0], list) else []
    reasons = [entry[-1] for entry in entries if isinstance(entry, tuple) and entry and entry[-1]]
    return ", ".join(reasons) or _short(error)


def _short(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return " ".join(text.split())[:300]


#: orchestrator's status poll (B.1.2): path, Agent field, the zero value an error answer leaves.
STATUS_POLL = (
    ("available-snapshots-local", "AvailableLocalSnapshots", []),
    ("available-snapshots", "AvailableSnapshots", []),
    ("lvs-snapshots", "LogicalVolumes", []),
    ("mount", "MountPoint", {"Path": "", "Device": "", "LVPath": "", "FileSystem": "", "IsMounted": False,
                             "DiskUsage": 0, "MySQLDataPath": "", "MySQLDiskUsage": 0}),
    ("mysql-status", "MySQLRunning", False),
    ("mysql-port", "MySQLPort", 0),
    ("mysql-du", "MySQLDiskUsage", 0),
    ("mysql-datadir-available-space", "MySQLDatadirDiskFree", 0),
    ("mysql-error-log-tail", "MySQLErrorLogTail", []),
)


@attrs.define
class AgentFacts:
    """orchestrator's ``Agent`` after a status poll; ``errors``: field -> the agent's refusal."""

    AvailableLocalSnapshots: list = attrs.Factory(list)
    AvailableSnapshots: list = attrs.Factory(list)
    LogicalVolumes: list = attrs.Factory(list)
    MountPoint: dict = attrs.Factory(dict)
    MySQLRunning: bool = False
    MySQLPort: int = 0
    MySQLDiskUsage: int = 0
    MySQLDatadirDiskFree: int = 0
    MySQLErrorLogTail: list = attrs.Factory(list)
    errors: dict = attrs.Factory(dict)


async def status_poll(agent: AgentClient) -> AgentFacts:
    """The 9 GETs in orchestrator's order.  An answer other than 200 leaves the zero value, as in
    orchestrator, and is kept in ``errors``; an agent that cannot be reached is a CtlError."""
    facts = AgentFacts()
    for path, field, zero in STATUS_POLL:
        try:
            value = await agent.get(path)
        except HttpStatusError as e:
            value = copy.copy(zero)
            facts.errors[field] = e.message
            if e.status == 401:
                raise
        setattr(facts, field, value)
    return facts
