"""Registration with orchestrator and the heartbeat that makes the status endpoint say OK.

Per orchestrator node (``AgentsServer`` may list a raft cluster): ``submit-agent`` once the
listener is up and then every ``ResubmitAgentIntervalMinutes``, ``agent-ping`` every
``ContinuousPollSeconds``.  A failure (transport error, timeout, non-2xx, or orchestrator's
ERROR envelope) is logged and retried with exponential backoff and jitter; the loop never dies.
"""

from __future__ import annotations

import collections
import json
import random
from typing import Callable

from treq.client import HTTPClient
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.task import deferLater
from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory

from orchagent import logs
from orchagent.errors import redact
from orchagent.interfaces import Clock

log = logs.logger(__name__)

#: Backoff after the n-th consecutive failure: 2, 4, 8... seconds, capped by the poll interval.
_MAX_BACKOFF_SECONDS = 60


class _QuietClientFactory(_HTTP11ClientFactory):
    noisy = False  # no "Starting factory" / "Stopping factory" INFO pair per heartbeat


class QuietConnectionPool(HTTPConnectionPool):
    """The pool for calls to orchestrator, without Twisted's two log lines per connection."""

    _factory = _QuietClientFactory  # documented as the pool's factory in Twisted 22.4 and later


class Registrar(Service):
    def __init__(self, *, client: HTTPClient, clock: Clock, urls: tuple[str, ...], hostname: str,
                 http_port: int, token: str, poll_seconds: int, resubmit_minutes: int,
                 status_bad_seconds: int, timeout: float, jitter: Callable[[], float] = random.random):
        self._client = client
        self._clock = clock
        self._urls = urls
        self._hostname = hostname
        self._http_port = http_port
        self._token = token
        self._poll = poll_seconds
        self._resubmit = resubmit_minutes * 60
        self._bad_after = status_bad_seconds
        self._timeout = timeout
        self._jitter = jitter
        self._loops: list[Deferred] = []
        self._last_talkback: float | None = None
        self._last_answer: float | None = None  # the start does not count here
        self.calls: collections.Counter[tuple[str, str]] = collections.Counter()  # (call, ok|failed), for metrics
        self._registered_with: set[str] = set()

    def startService(self) -> None:
        super().startService()
        # Counting the start as a talkback keeps the status OK while the first ping is on its way.
        self._last_talkback = self._clock.seconds()
        if not self._urls:
            log.warn("AgentsServer is empty: running without registering with orchestrator")
        self._loops = [Deferred.fromCoroutine(self._keep_in_touch(url)) for url in self._urls]

    def stopService(self) -> Deferred:
        super().stopService()
        for loop in self._loops:
            loop.cancel()
        return DeferredList(self._loops, consumeErrors=True)

    def healthy(self) -> bool:
        """True unless orchestrator nodes exist and none answered within ``StatusBadSeconds``."""
        if not self._urls or self._last_talkback is None:
            return True
        return self._clock.seconds() - self._last_talkback <= self._bad_after

    def seconds_since_answer(self) -> float | None:
        """Since an orchestrator node last answered; None before the first answer."""
        return None if self._last_answer is None else self._clock.seconds() - self._last_answer

    async def _keep_in_touch(self, base: str) -> None:
        submit_due: float | None = self._clock.seconds()
        failures = 0
        try:
            while self.running:
                now = self._clock.seconds()
                if submit_due is not None and now >= submit_due:
                    path = f"/api/submit-agent/{self._hostname}/{self._http_port}/{self._token}"
                    ok = await self._call(base, path, "submit-agent")
                    if ok:
                        submit_due = now + self._resubmit if self._resubmit else None
                else:
                    ok = await self._call(base, "/api/agent-ping", "agent-ping")
                failures = 0 if ok else failures + 1
                delay = self._next_delay(failures, submit_due)
                if delay is None:
                    log.info("{base}: registered; no heartbeat or resubmit configured", base=base)
                    return
                await deferLater(self._clock, delay, lambda: None)
        except CancelledError:
            pass

    def _next_delay(self, failures: int, submit_due: float | None) -> float | None:
        """Seconds to the next call, with +/-10% jitter so a fleet does not beat in step."""
        if failures:
            delay = min(2 ** failures, self._poll or _MAX_BACKOFF_SECONDS, _MAX_BACKOFF_SECONDS)
        elif self._poll:
            delay = self._poll
        elif submit_due is not None:
            delay = max(submit_due - self._clock.seconds(), 1)
        else:
            return None
        return delay * (0.9 + 0.2 * self._jitter())

    async def _call(self, base: str, path: str, what: str) -> bool:
        try:
            response = await self._client.get(base + path, timeout=self._timeout, reactor=self._clock)
            body = await response.content()
        except Exception as e:
            if not self.running:
                raise  # stopService cancelled us
            log.warn("{what} to {base} failed: {error}", what=what, base=base, error=self._redact(e))
            self.calls[(what, "failed")] += 1
            return False
        if not 200 <= response.code < 300:
            log.warn("{what} to {base} failed: HTTP {code}", what=what, base=base, code=response.code)
            self.calls[(what, "failed")] += 1
            return False
        error = _orchestrator_error(body)
        if error:
            log.warn("{what} to {base} refused: {error}", what=what, base=base, error=self._redact(error))
            self.calls[(what, "failed")] += 1
            return False
        self.calls[(what, "ok")] += 1
        self._last_talkback = self._last_answer = self._clock.seconds()
        if what == "submit-agent" and base not in self._registered_with:
            self._registered_with.add(base)
            log.info("registered with orchestrator {base} as {hostname} port {port}", base=base,
                     hostname=self._hostname, port=self._http_port)
        else:
            log.debug("{what} to {base} OK", what=what, base=base)
        return True

    def _redact(self, error: object) -> str:
        """Error texts may quote the submit URL, which carries the token."""
        return redact(str(error), (self._token,)) or type(error).__name__


def _orchestrator_error(body: bytes) -> str | None:
    """Orchestrator answers some failures with 200 and ``{"Code":"ERROR",...}``."""
    try:
        document = json.loads(body)
    except ValueError:
        return None
    if isinstance(document, dict) and document.get("Code") == "ERROR":
        return str(document.get("Message"))
    return None
