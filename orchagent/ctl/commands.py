"""The subcommands of ``orchagent-ctl``: each reads the agents through the API and prints for a
human (or ``--json`` for a script); :mod:`orchagent.ctl.cli` parses the command line and runs them."""

from __future__ import annotations

import json
import shutil
import signal
from typing import IO, Callable

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from orchagent.ctl import progress
from orchagent.ctl.client import AgentAddress, AgentClient, CtlError, HttpStatusError, status_poll
from orchagent.ctl.seed import EXIT_FAILED, EXIT_OK, SeedRunner
from orchagent.ctl.sequence import SeedSequence


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
    with on_interrupt(ctx.reactor, runner.interrupt):
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


async def cmd_throttle(ctx: Context) -> int:
    agent, seed_id = ctx.client(ctx.args.host), ctx.args.seed_id
    await agent.get(f"seed-throttle/{seed_id}", (("bytesPerSecond", str(ctx.args.rate)),))
    status = await agent.get(f"seed-status/{seed_id}")
    if ctx.args.json:
        ctx.json(status)
    else:
        limit = status["MaxBytesPerSecond"]
        ctx.print(f"seed {seed_id} on {agent.address}: sending at most "
                  f"{progress.human_bytes(limit) + '/s' if limit else 'as fast as it can (no limit)'}; "
                  f"now {progress.human_bytes(status['BytesPerSecond'])}/s on average")
    return EXIT_OK


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
    "throttle": cmd_throttle, "snapshots": cmd_snapshots, "mysql": cmd_mysql,
}


# --- plumbing -------------------------------------------------------------------------------------


def _sleep(clock, seconds: float) -> Deferred:
    return deferLater(clock, seconds, lambda: None)


class on_interrupt:
    """SIGINT calls ``handler`` in the reactor thread instead of stopping the reactor."""

    def __init__(self, reactor, handler: Callable[[], None]):
        self._reactor = reactor
        self._handler = handler

    def __enter__(self):
        self._previous = signal.signal(signal.SIGINT, lambda *_: self._reactor.callFromThread(self._handler))

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._previous)
