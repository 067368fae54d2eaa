"""The service tree: API listener, registrar, seeds, and an orderly shutdown of running commands.

:func:`make_service` builds the whole object graph, top to bottom: the one process runner and
thread runner, the registrar, the host objects (:mod:`orchagent.graph`), the seed manager, the
metrics, the web handlers over them, the site.  Read it to see what talks to what.
"""

from __future__ import annotations

import os
import signal

from treq.client import HTTPClient
from twisted.application.service import MultiService, Service
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.web.client import Agent
from twisted.web.server import Site

from orchagent import connections, logs, tls
from orchagent.config import Config
from orchagent.graph import make_host, mysql_api, storage_api
from orchagent.host.mysql import MySQL
from orchagent.host.replication import ReplicationSetup
from orchagent.process import ProcessRunner
from orchagent.registrar import QuietConnectionPool, Registrar
from orchagent.seed.manager import SeedManager
from orchagent.seed.records import SeedStore
from orchagent.threads import thread_runner
from orchagent.token import Token
from orchagent.web.audit import AuditLog
from orchagent.web.coreapi import CoreAPI
from orchagent.web.metrics import Metrics
from orchagent.web.openapi import with_openapi
from orchagent.web.resource import ApiResource, Guard
from orchagent.web.routes import route_table
from orchagent.web.seedapi import SeedAPI
from orchagent.web.site import ApiSite

log = logs.logger(__name__)

LISTEN_BACKLOG = 1024


def make_service(config: Config, reactor, token: Token | None = None) -> MultiService:
    """``token``: the fixed one of ``TokenFile`` (read at start-up); None draws a new one."""
    token = token or Token()
    in_thread = thread_runner(reactor)  # the one thread runner: blocking file work, everyone's
    runner = ProcessRunner(reactor, default_timeout=config.command_timeout_seconds, in_thread=in_thread,
                           exec_with_sudo=config.exec_with_sudo, max_running=config.max_concurrent_commands,
                           secrets=(token.value, config.http_auth_password, config.seed_transfer_secret))
    registrar = Registrar(
        client=HTTPClient(Agent(reactor, contextFactory=tls.ClientPolicy(config),
                                pool=QuietConnectionPool(reactor),
                                connectTimeout=config.http_timeout_seconds or None)),
        clock=reactor, urls=config.agents_urls, hostname=config.agent_hostname,
        http_port=config.http_port, token=token.value,
        poll_seconds=config.continuous_poll_seconds,
        resubmit_minutes=config.resubmit_agent_interval_minutes,
        status_bad_seconds=config.status_bad_seconds,
        timeout=config.http_timeout_seconds or None,
    )
    mysql = MySQL(config, runner, reactor, in_thread=in_thread)
    host = make_host(config, runner, reactor, mysql, in_thread=in_thread)
    seeds = SeedManager(config=config, reactor=reactor, mysql=host.mysql, snapshots=host.snapshots,
                        eraser=host.datadir, disk=host.disk, runner=runner,
                        store=SeedStore(config.state_directory), defer_to_thread=in_thread,
                        replication=ReplicationSetup(config, runner, reactor, in_thread))
    mysql.after_start(seeds.start_replication)
    host.datadir.watch(seeds)
    metrics = Metrics(commands=runner, registration=registrar, mysql=host.mysql, disk=host.disk, seeds=seeds)
    core = CoreAPI(hostname=config.agent_hostname, registrar=registrar, runner=runner,
                   custom_commands=config.custom_commands, metrics=metrics)
    routes = with_openapi(route_table(core, storage_api(config, host), mysql_api(config, host), SeedAPI(seeds),
                                      config.status_endpoint, config.apply_relaylog_max_bytes,
                                      metrics=config.metrics_enabled))
    observers = [AuditLog(config.audit_log_file)] + ([metrics] if config.metrics_enabled else [])
    site = ApiSite(ApiResource(routes, _guard(config, token), reactor, observers), reactor=reactor,
                   max_connections=config.http_max_connections, header_timeout=config.http_header_timeout_seconds)

    top = MultiService()
    ApiListener(config, token, site, reactor).setServiceParent(top)
    registrar.setServiceParent(top)
    seeds.setServiceParent(top)
    CommandReaper(runner).setServiceParent(top)
    CleanExitOnSignals(reactor).setServiceParent(top)
    return top


def _guard(config: Config, token: Token) -> Guard:
    return Guard(
        token=token,
        token_header=config.token_http_header,
        basic_auth=(config.http_auth_user, config.http_auth_password) if config.http_auth_user else None,
        valid_ous=frozenset(config.ssl_valid_ous) if config.use_mutual_tls else None,
        status_ou_verify=config.status_ou_verify,
    )


class ApiListener(Service):
    """Listens before privileges could be dropped, so a port conflict stops twistd at once."""

    def __init__(self, config: Config, token: Token, site: Site, reactor):
        self._config = config
        self._token = token
        self._site = site
        self._reactor = reactor
        self._port = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        config = self._config
        os.makedirs(config.state_directory, mode=0o700, exist_ok=True)
        if config.token_hint_file:
            self._token.write_hint(config.token_hint_file)
        connections.raise_open_files_limit(config.http_max_connections + config.seed_transfer_max_connections)
        failures = []
        self._endpoint().listen(self._site).addCallbacks(self._listening, failures.append)
        if failures:
            # One line and exit status 1 instead of twistd's traceback: a busy port is not a bug.
            error = failures[0].value
            raise SystemExit(f"orchagent: cannot listen on {config.http_bind_address or '0.0.0.0'}:"
                             f"{config.http_port} (HTTPBindAddress, HTTPPort): "
                             f"{getattr(error, 'socketError', None) or error}")

    def _endpoint(self):
        config, address = self._config, self._config.http_bind_address
        # A deep accept queue (the kernel caps it at somaxconn): a burst of connections waits to be
        # accepted, and the cap (HTTPMaxConnections) decides, instead of SYNs dropped at 50.
        backlog = min(config.http_max_connections, LISTEN_BACKLOG)
        if config.use_ssl:
            return SSL4ServerEndpoint(self._reactor, config.http_port, tls.server_options(config),
                                      backlog=backlog, interface=address)
        if ":" in address:
            return TCP6ServerEndpoint(self._reactor, config.http_port, backlog=backlog, interface=address)
        return TCP4ServerEndpoint(self._reactor, config.http_port, backlog=backlog, interface=address)

    def _listening(self, port) -> None:
        self._port = port
        host = port.getHost()
        scheme = "https" if self._config.use_ssl else "http"
        hint = self._config.token_hint_file or "not written (TokenHintFile is empty)"
        log.info("orchagent listening on {url}; token hint file: {hint}",
                 url=f"{scheme}://{host.host}:{host.port}/api/hostname", hint=hint)

    def stopService(self):
        super().stopService()
        if self._port is not None:
            return self._port.stopListening()


class CommandReaper(Service):
    """At shutdown, kill the process groups of commands still running and wait for them."""

    def __init__(self, runner: ProcessRunner):
        self._runner = runner

    def stopService(self):
        super().stopService()
        return self._runner.stop_all()


class CleanExitOnSignals(Service):
    """SIGTERM and SIGINT shut down in order and exit 0.

    twistd's own handlers make the process re-raise the signal after shutdown, so a clean stop
    would look like a death by signal.  Ours are installed once the reactor runs (it installs
    its handlers when it starts) and simply stop the reactor.
    """

    def __init__(self, reactor):
        self._reactor = reactor

    def startService(self):
        super().startService()
        self._reactor.callWhenRunning(self._install)

    def _install(self):
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)

    def _stop(self, signum, frame):
        log.info("received {signal}, shutting down", signal=signal.Signals(signum).name)
        self._reactor.callFromThread(self._reactor.stop)
