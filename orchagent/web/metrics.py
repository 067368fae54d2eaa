"""Prometheus metrics for ``GET /metrics``: what an operator graphs and alerts on.

Requests are counted as they end (:meth:`Metrics.request_done`, called by the web layer for
every request).  Everything else is read when Prometheus scrapes, from the objects that already
know it: the process runner's outcome counts, the registrar's calls, the MySQL and disk facts
(through their caches, so a scrape costs what a status poll costs) and the seed records.  Labels
never carry a request value beyond the route pattern, and never a secret.
"""

from __future__ import annotations

from typing import Iterable, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from orchagent import logs
from orchagent.interfaces import Disk, MySQLServer, Seeds
from orchagent.web.resource import Answered

log = logs.logger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"))
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Commands(Protocol):
    outcomes: dict[str, int]  # "succeeded", "failed", "timed_out" -> count


class Registration(Protocol):
    calls: dict[tuple[str, str], int]  # ("submit-agent" | "agent-ping", "ok" | "failed") -> count

    def seconds_since_answer(self) -> float | None: ...


class Metrics:
    def __init__(self, *, commands: Commands, registration: Registration, mysql: MySQLServer, disk: Disk,
                 seeds: Seeds):
        self._commands = commands
        self._registration = registration
        self._mysql = mysql
        self._disk = disk
        self._seeds = seeds
        self._registry = CollectorRegistry()
        self._requests = Counter("orchagent_http_requests", "API requests answered, by route pattern, "
                                 "method and status code", ["route", "method", "code"], registry=self._registry)
        self._latency = Histogram("orchagent_http_request_duration_seconds", "Time to answer an API request, "
                                  "by route pattern", ["route"], buckets=_LATENCY_BUCKETS, registry=self._registry)
        self._facts: list[GaugeMetricFamily | CounterMetricFamily] = []
        self._registry.register(self)  # collect() hands over the facts render() read

    def request_done(self, answered: Answered) -> None:
        """Count one answered request, labelled by its route's pattern (never its values)."""
        route = answered.route.pattern if answered.route is not None else "unmatched"
        method = answered.method if answered.method in _METHODS else "other"
        self._requests.labels(route, method, str(answered.code)).inc()
        self._latency.labels(route).observe(answered.seconds)

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        return list(self._facts)

    async def render(self) -> bytes:
        """The text exposition format, with the host facts read now."""
        self._facts = await self._read_facts()
        return generate_latest(self._registry)

    async def _read_facts(self) -> list[GaugeMetricFamily | CounterMetricFamily]:
        commands = CounterMetricFamily("orchagent_commands", "Commands run, by how they ended", labels=["outcome"])
        for outcome in ("succeeded", "failed", "timed_out"):
            commands.add_metric([outcome], self._commands.outcomes.get(outcome, 0))
        calls = CounterMetricFamily("orchagent_registration_calls", "Calls to orchestrator (submit-agent, "
                                    "agent-ping), by outcome", labels=["call", "outcome"])
        for call in ("submit-agent", "agent-ping"):
            for outcome in ("ok", "failed"):
                calls.add_metric([call, outcome], self._registration.calls.get((call, outcome), 0))
        facts = [commands, calls]
        age = self._registration.seconds_since_answer()
        if age is not None:
            facts.append(GaugeMetricFamily("orchagent_orchestrator_last_answer_age_seconds",
                                           "Seconds since an orchestrator node last answered", value=age))
        facts += await self._mysql_facts()
        facts += self._seed_facts()
        return facts

    async def _mysql_facts(self) -> list[GaugeMetricFamily]:
        facts = [GaugeMetricFamily("orchagent_mysql_up", "1 when MySQL runs (or cannot be shown to be "
                                   "stopped), as mysql-status answers", value=int(await self._mysql.is_running()))]
        try:
            datadir = await self._mysql.datadir()
            facts.append(GaugeMetricFamily("orchagent_datadir_bytes", "Apparent size of the datadir (du -sb)",
                                           value=await self._disk.usage(datadir)))
            facts.append(GaugeMetricFamily("orchagent_datadir_free_bytes", "Bytes available on the datadir's "
                                           "file system (df)", value=await self._disk.available(datadir)))
        except Exception as e:  # a scrape must not fail because one fact is unknown
            log.warn("metrics: the datadir's size is unknown: {error}", error=e)
        return facts

    def _seed_facts(self) -> list[GaugeMetricFamily]:
        records, now = self._seeds.records(), self._seeds.now()
        by_state = GaugeMetricFamily("orchagent_seeds", "Seeds this agent knows, by role and state",
                                     labels=["role", "state"])
        counts: dict[tuple[str, str], int] = {}
        for record in records:
            counts[(record.role, record.state)] = counts.get((record.role, record.state), 0) + 1
        for (role, state), count in sorted(counts.items()):
            by_state.add_metric([role, state], count)
        done = GaugeMetricFamily("orchagent_seed_bytes_done", "Bytes a running seed has moved", labels=["seed_id", "role"])
        total = GaugeMetricFamily("orchagent_seed_bytes_total", "Bytes a running seed will move (when known)",
                                  labels=["seed_id", "role"])
        rate = GaugeMetricFamily("orchagent_seed_bytes_per_second", "A running seed's rate since its first byte",
                                 labels=["seed_id", "role"])
        resumes = GaugeMetricFamily("orchagent_seed_resumes", "Dropped connections a running seed resumed after",
                                    labels=["seed_id", "role"])
        for record in records:
            if record.completed:
                continue  # finished seeds live on as counts only, so series do not pile up
            labels = [str(record.seed_id), record.role]
            done.add_metric(labels, record.bytes_done)
            rate.add_metric(labels, record.rate(now))
            resumes.add_metric(labels, record.resumes)
            if record.bytes_total is not None:
                total.add_metric(labels, record.bytes_total)
        return [by_state, done, total, rate, resumes]

