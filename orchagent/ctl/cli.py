"""``orchagent-ctl``: the operator's command line for orchagent agents (argparse, treq, ``react``).

Exit status: 0 success, 1 failure (the reason on one line on stderr), 2 bad usage, 130
interrupted with Ctrl-C (a seed is aborted on both agents first).  No traceback ever reaches the terminal, and the token never appears in
what is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
from typing import IO, Callable

import attrs
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater, react
from twisted.web.client import Agent, HTTPConnectionPool

from orchagent import tls
from orchagent.config import Config
from orchagent.ctl import progress
from orchagent.ctl.client import DEFAULT_PORT, AgentAddress, AgentClient, CtlError, HttpStatusError, status_poll
from orchagent.ctl.seed import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, SeedRunner
from orchagent.ctl.sequence import SeedSequence

TOKEN_ENV = "ORCHAGENT_TOKEN"

EPILOG = f"""\
HOST is host[:port] (default port {DEFAULT_PORT}; [v6-address]:port for IPv6). The token comes
from --token, --token-file or the environment variable {TOKEN_ENV} (--token is visible to other
users in ps; prefer the others). Exit status: 0 success, 1 failure, 2 bad usage, 130 seed aborted
with Ctrl-C.

examples:
  orchagent-ctl --token-file /var/lib/orchagent/token status db1 db2:3003
  orchagent-ctl seed db1 db2                # source, then target; Ctrl-C aborts on both
  orchagent-ctl seed-status db2 1764400000 --follow
  orchagent-ctl --https --ca /etc/ssl/our-ca.pem mysql stop db2
"""


def _connection_options(for_subcommand: bool) -> argparse.ArgumentParser:
    """Accepted before and after the subcommand; after it, only what is given overrides."""
    def default(value):
        return argparse.SUPPRESS if for_subcommand else value

    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection")
    group.add_argument("--token", default=default(None), help="the agents' token")
    group.add_argument("--token-file", metavar="FILE", default=default(None),
                       help="read the token from FILE (e.g. the agent's TokenHintFile)")
    group.add_argument("--https", action="store_true", default=default(False),
                       help="talk HTTPS (agents with UseSSL)")
    group.add_argument("--ca", metavar="FILE", default=default(None),
                       help="PEM CA bundle that signs the agents' certificates (default: the system store)")
    group.add_argument("--cert", metavar="FILE", default=default(None),
                       help="client certificate (PEM), for agents with UseMutualTLS")
    group.add_argument("--key", metavar="FILE", default=default(None), help="the client certificate's private key")
    group.add_argument("--timeout", type=float, default=default(30.0), metavar="SECONDS",
                       help="time limit of each call (default: 30)")
    group.add_argument("--json", action="store_true", default=default(False),
                       help="print JSON (one object per line) for scripts")
    return common


def parser() -> argparse.ArgumentParser:
    common = _connection_options(for_subcommand=False)
    after = _connection_options(for_subcommand=True)
    top = argparse.ArgumentParser(
        prog="orchagent-ctl", parents=[common], epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Look at and drive orchagent agents directly: status, seeds, snapshots, MySQL.")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[after], help=help_text, description=help_text)

    status = command("status", "each agent's view of its host, at a glance")
    status.add_argument("hosts", nargs="+", metavar="HOST", type=_address_text)

    seed = command("seed", "seed TARGET with SOURCE's snapshot, calling both agents as orchestrator does")
    seed.add_argument("source", metavar="SOURCE", type=_address_text)
    seed.add_argument("target", metavar="TARGET", type=_address_text)
    seed.add_argument("--seed-id", type=_positive_int, help="the seed's id (default: the current Unix time)")
    seed.add_argument("--wait-before-send", type=float, default=2, metavar="SECONDS",
                      help="pause between arming the target and starting the source, as orchestrator's "
                           "SeedWaitSecondsBeforeSend (default: %(default)s)")
    seed.add_argument("--poll-seconds", type=float, default=30, metavar="SECONDS",
                      help="orchestrator's copy-loop interval; the end is noticed at once anyway "
                           "(default: %(default)s)")
    seed.add_argument("--interval", type=float, default=1, metavar="SECONDS",
                      help="progress refresh (default: %(default)s)")

    seed_status = command("seed-status", "a seed as one agent sees it: state, bytes, rate, ETA, error")
    seed_status.add_argument("host", metavar="HOST", type=_address_text)
    seed_status.add_argument("seed_id", metavar="ID", type=_positive_int)
    seed_status.add_argument("--follow", action="store_true", help="show progress until the seed ends; "
                             "exit 0 only if it succeeded")
    seed_status.add_argument("--interval", type=float, default=1, metavar="SECONDS",
                             help="refresh with --follow (default: %(default)s)")

    abort = command("abort", "abort a seed on one agent (it kills everything of the seed, then answers)")
    abort.add_argument("host", metavar="HOST", type=_address_text)
    abort.add_argument("seed_id", metavar="ID", type=_positive_int)

    snapshots = command("snapshots", "the snapshots an agent lists, and what is mounted")
    snapshots.add_argument("host", metavar="HOST", type=_address_text)

    mysql = command("mysql", "start or stop MySQL through the agent's service commands")
    mysql.add_argument("action", choices=("start", "stop"))
    mysql.add_argument("host", metavar="HOST", type=_address_text)
    return top


def _address_text(text: str) -> str:
    try:
        AgentAddress.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


class Context:
    """What every subcommand needs: clients for HOSTs, the output, the clock."""

    def __init__(self, args, reactor, http, token: str, out: IO[str], err: IO[str]):
        self.args = args
        self.reactor = reactor
        self._http = http
        self._token = token
        self.out = out
        self.err = err

    def client(self, text: str) -> AgentClient:
        return AgentClient(self._http, AgentAddress.parse(text, self.args.https), self._token,
                           timeout=self.args.timeout, clock=self.reactor)

    def print(self, line: str = "") -> None:
        self.out.write(line + "\n")

    def json(self, document) -> None:
        self.out.write(json.dumps(document) + "\n")

    def display(self):
        width = shutil.get_terminal_size((100, 24)).columns
        return progress.make_display(self.out, self.args.json, _is_terminal(self.out), width)


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def read_token(args, environ) -> str:
    if args.token:
        return args.token
    if args.token_file:
        try:
            with open(args.token_file, encoding="ascii", errors="replace") as f:
                return f.read().strip()
        except OSError as e:
            raise CtlError(f"--token-file {args.token_file}: {e.strerror}") from None
    return environ.get(TOKEN_ENV, "").strip()


def http_client(args, reactor):
    """One treq client for every agent; TLS as the agent's own client TLS (orchagent.tls)."""
    if bool(args.cert) != bool(args.key):
        raise CtlError("--cert and --key go together")
    policy = tls.ClientPolicy(Config(ssl_ca_file=args.ca or "", ssl_cert_file=args.cert or "",
                                     ssl_private_key_file=args.key or ""))
    if args.https:
        try:  # load the files now, so a bad one is named before any call
            policy.creatorForNetloc(b"localhost", DEFAULT_PORT)
        except Exception as e:
            raise CtlError(f"cannot load the TLS files (--ca, --cert, --key): {e or type(e).__name__}") from None
    pool = HTTPConnectionPool(reactor, persistent=True)
    return HTTPClient(Agent(reactor, contextFactory=policy, pool=pool, connectTimeout=args.timeout))


# --- the subcommands ------------------------------------------------------------------------------


async def cmd_status(ctx: Context) -> int:
    code = EXIT_OK
    for text in ctx.args.hosts:
        agent = ctx.client(text)
        try:
            hostname = await agent.get("hostname", token=False)
            facts = await status_poll(agent)
            health = await _health(agent)
            version = await _optional(agent, "version") or "unknown"
            seeds = await _optional(agent, "seeds") or []
        except CtlError as e:
            code = EXIT_FAILED
            if ctx.args.json:
                ctx.json({"Host": str(agent.address), "Error": str(e)})
            else:
                ctx.err.write(f"orchagent-ctl: {e}\n")
            continue
        if ctx.args.json:
            facts_json = attrs.asdict(facts)
            facts_json["Errors"] = facts_json.pop("errors")
            ctx.json({"Host": str(agent.address), "Hostname": hostname, "Version": version, "Status": health,
                      **facts_json, "RunningSeeds": [seed for seed in seeds if not seed["Completed"]],
                      "LatestSeed": seeds[0] if seeds else None})
        else:
            _print_status(ctx, agent, hostname, version, health, facts, seeds)
    return code


async def _optional(agent: AgentClient, path: str):
    """A route older agents lack: None when it answers 404."""
    try:
        return await agent.get(path)
    except HttpStatusError as e:
        if e.status == 404:
            return None
        raise


async def _health(agent: AgentClient) -> str:
    """The status endpoint: "OK", or "BAD" when no orchestrator node answered lately."""
    try:
        return await agent.get("status", token=False)
    except CtlError as e:
        return getattr(e, "message", str(e))


def _print_status(ctx: Context, agent: AgentClient, hostname: str, version: str, health: str, facts,
                  seeds: list[dict]) -> None:
    mount = facts.MountPoint
    volumes = facts.LogicalVolumes
    ctx.print(f"{agent.address}  {hostname}  (orchagent {version})")
    ctx.print(f"  orchestrator:  {health}" + ("" if health == "OK" else " (no orchestrator node answered lately)"))
    ctx.print(f"  MySQL:         {'running' if facts.MySQLRunning else 'not running'}, port {facts.MySQLPort}")
    ctx.print(f"  datadir:       {progress.human_bytes(facts.MySQLDiskUsage)} used, "
              f"{progress.human_bytes(facts.MySQLDatadirDiskFree)} free")
    names = ", ".join(volume["Name"] for volume in volumes) or "none"
    ctx.print(f"  snapshots:     {len(volumes)}: {names}")
    if mount.get("IsMounted"):
        ctx.print(f"  mounted:       {mount['LVPath'] or mount['Device']} at {mount['Path']} "
                  f"(MySQL data {progress.human_bytes(mount['MySQLDiskUsage'])})")
    else:
        ctx.print(f"  mounted:       nothing{' at ' + mount['Path'] if mount.get('Path') else ''}")
    running = [seed for seed in seeds if not seed["Completed"]]
    for seed in running:
        ctx.print(f"  seed {seed['SeedId']}: {seed['Role']} ({seed['Mode']}), peer {seed['Peer'] or '-'}: "
                  + progress.progress_text({seed["Role"]: seed}, bar=False).strip())
    if not running:
        latest = f"; latest: {seeds[0]['SeedId']} ({seeds[0]['Role']}) {seeds[0]['State']}" if seeds else ""
        ctx.print(f"  seeds:         none running{latest}")
    tail = [line for line in facts.MySQLErrorLogTail if line]
    ctx.print(f"  error log:     {'last ' + str(min(len(tail), 5)) + ' lines' if tail else 'nothing to show'}")
    for line in tail[-5:]:
        ctx.print(f"    {line}")
    for field, message in facts.errors.items():
        ctx.print(f"  ! {field}: {message}")


async def cmd_seed(ctx: Context) -> int:
    args = ctx.args
    source, target = ctx.client(args.source), ctx.client(args.target)
    if source.address == target.address:
        raise CtlError(f"cannot seed {target.address} onto itself")
    seed_id = args.seed_id or int(ctx.reactor.seconds())
    sequence = SeedSequence(seed_id, target, source, wait_before_send=args.wait_before_send,
                            poll_seconds=args.poll_seconds)
    runner = SeedRunner(sequence, ctx.display(), ctx.reactor, interval=args.interval)
    if not args.json:
        ctx.print(f"seed {seed_id}: {source.address} -> {target.address} (Ctrl-C aborts it on both)")
    with _on_interrupt(ctx.reactor, runner.interrupt):
        return await runner.run()


async def cmd_seed_status(ctx: Context) -> int:
    agent, seed_id = ctx.client(ctx.args.host), ctx.args.seed_id
    status = await agent.get(f"seed-status/{seed_id}")
    if not ctx.args.follow:
        if ctx.args.json:
            ctx.json(status)
        else:
            _print_seed_status(ctx, agent, status)
        return EXIT_FAILED if status["Completed"] and not status["Succeeded"] else EXIT_OK
    display = ctx.display()
    role = status["Role"]
    while True:
        display.progress({role: status})
        if status["Completed"]:
            break
        await _sleep(ctx.reactor, ctx.args.interval)
        status = await agent.get(f"seed-status/{seed_id}")
    ok = status["Succeeded"]
    display.result(ok, f"seed {seed_id} on {agent.address}: {status['State']}"
                   + (f": {status['Error']}" if status["Error"] else ""))
    return EXIT_OK if ok else EXIT_FAILED


def _print_seed_status(ctx: Context, agent: AgentClient, status: dict) -> None:
    ctx.print(f"seed {status['SeedId']} on {agent.address}: {status['Role']} ({status['Mode']}), "
              f"peer {status['Peer'] or '-'}, {status['State']}")
    ctx.print("  " + progress.progress_text({status["Role"]: status}, bar=False))
    files = f"{status['FilesDone']} of {status['FilesTotal'] if status['FilesTotal'] is not None else '?'}"
    ctx.print(f"  files {files}; path {status['Path'] or '-'}")
    ctx.print(f"  started {status['StartedAt'] or '-'}, ended {status['EndedAt'] or '-'}")
    if status["Error"]:
        ctx.print(f"  error: {status['Error']}")


async def cmd_abort(ctx: Context) -> int:
    agent, seed_id = ctx.client(ctx.args.host), ctx.args.seed_id
    await agent.get(f"abort-seed/{seed_id}")
    status = await agent.get(f"seed-status/{seed_id}")
    if ctx.args.json:
        ctx.json(status)
    else:
        ctx.print(f"seed {seed_id} on {agent.address}: {status['State']} (completed: "
                  f"{str(status['Completed']).lower()}, succeeded: {str(status['Succeeded']).lower()})")
    return EXIT_OK if status["Completed"] and not status["Succeeded"] else EXIT_FAILED


async def cmd_snapshots(ctx: Context) -> int:
    agent = ctx.client(ctx.args.host)
    volumes = await agent.get("lvs-snapshots")
    mount = await agent.get("mount")
    local = await agent.get("available-snapshots-local")
    remote = await agent.get("available-snapshots")
    if ctx.args.json:
        ctx.json({"Host": str(agent.address), "LogicalVolumes": volumes, "MountPoint": mount,
                  "AvailableLocalSnapshots": local, "AvailableSnapshots": remote})
        return EXIT_OK
    ctx.print(f"{agent.address}: {len(volumes)} snapshot(s)")
    for volume in volumes:
        mounted = "  (mounted)" if mount.get("IsMounted") and mount.get("LVPath") == volume["Path"] else ""
        ctx.print(f"  {volume['Name']}  {volume['Path']}{mounted}")
    if mount.get("IsMounted"):
        ctx.print(f"mounted at {mount['Path']}: {mount['LVPath'] or mount['Device']} ({mount['FileSystem']}), "
                  f"MySQL data in {mount['MySQLDataPath'] or '?'}")
    ctx.print(f"hosts with snapshots: local {', '.join(local) or '-'}; anywhere {', '.join(remote) or '-'}")
    return EXIT_OK


async def cmd_mysql(ctx: Context) -> int:
    agent, action = ctx.client(ctx.args.host), ctx.args.action
    await agent.get(f"mysql-{action}")
    running = await agent.get("mysql-status")
    wanted = action == "start"
    if ctx.args.json:
        ctx.json({"Host": str(agent.address), "MySQLRunning": running})
    else:
        ctx.print(f"MySQL on {agent.address}: {'running' if running else 'not running'}")
    if running != wanted:
        ctx.err.write(f"orchagent-ctl: {agent.address}: mysql-{action} answered, but MySQL is "
                      f"{'not ' if wanted else 'still '}running\n")
        return EXIT_FAILED
    return EXIT_OK


COMMANDS: dict[str, Callable] = {
    "status": cmd_status, "seed": cmd_seed, "seed-status": cmd_seed_status, "abort": cmd_abort,
    "snapshots": cmd_snapshots, "mysql": cmd_mysql,
}


# --- plumbing -------------------------------------------------------------------------------------


def _sleep(clock, seconds: float) -> Deferred:
    return deferLater(clock, seconds, lambda: None)


class _on_interrupt:
    """SIGINT calls ``handler`` in the reactor thread instead of stopping the reactor."""

    def __init__(self, reactor, handler: Callable[[], None]):
        self._reactor = reactor
        self._handler = handler

    def __enter__(self):
        self._previous = signal.signal(signal.SIGINT, lambda *_: self._reactor.callFromThread(self._handler))

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._previous)


async def run(reactor, args, *, http=None, environ=os.environ, out: IO[str] = sys.stdout,
              err: IO[str] = sys.stderr) -> int:
    """Run one subcommand; every failure becomes one line on ``err`` and exit status 1."""
    token = ""
    try:
        token = read_token(args, environ)
        ctx = Context(args, reactor, http or http_client(args, reactor), token, out, err)
        return await COMMANDS[args.command](ctx)
    except CtlError as e:
        err.write(f"orchagent-ctl: {e}\n")
    except CancelledError:  # Ctrl-C outside a seed
        err.write("orchagent-ctl: interrupted\n")
        return EXIT_INTERRUPTED
    except Exception as e:  # a bug must still not print a traceback that could carry the token
        text = f"{type(e).__name__}: {e}"
        err.write("orchagent-ctl: internal error: " + (text.replace(token, "<token>") if token else text) + "\n")
    return EXIT_FAILED


def main(argv: list[str] | None = None) -> None:
    """The console script: parse, then run the subcommand on the reactor and exit with its status."""
    args = parser().parse_args(argv)

    async def start(reactor) -> None:
        running = Deferred()
        reactor.callWhenRunning(running.callback, None)
        await running  # the reactor's own signal handlers are in place: ours may now replace SIGINT's
        command: list[Deferred] = []
        with _on_interrupt(reactor, lambda: command[0].cancel()):  # a seed installs its own while it runs
            command.append(Deferred.fromCoroutine(run(reactor, args)))
            raise SystemExit(await command[0])

    react(lambda reactor: Deferred.fromCoroutine(start(reactor)))


if __name__ == "__main__":
    main()
