"""``orchagent-ctl``: the operator's command line for orchagent agents (argparse, treq, ``react``).

Exit status: 0 success, 1 failure (the reason on one line on stderr), 2 bad usage, 130
interrupted with Ctrl-C (a seed is aborted on both agents first).  No traceback ever reaches the
terminal, and the token never appears in what is printed.  The subcommands are in
:mod:`orchagent.ctl.commands`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import IO

from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import react
from twisted.web.client import Agent, HTTPConnectionPool

from orchagent import tls
from orchagent.config import Config
from orchagent.ctl.client import DEFAULT_PORT, AgentAddress, CtlError
from orchagent.ctl.commands import COMMANDS, Context, on_interrupt
from orchagent.ctl.seed import EXIT_FAILED, EXIT_INTERRUPTED

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
  orchagent-ctl throttle db1 1764400000 20M  # the source's running send, 20 MiB/s (0: no limit)
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

    throttle = command("throttle", "pace a running seed's send on its source at RATE bytes per second "
                       "from now on (0: no limit)")
    throttle.add_argument("host", metavar="HOST", type=_address_text, help="the seed's source")
    throttle.add_argument("seed_id", metavar="ID", type=_positive_int)
    throttle.add_argument("rate", metavar="RATE", type=_rate,
                          help="bytes per second, with an optional K, M or G suffix (KiB, MiB, GiB)")

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


def _rate(text: str) -> int:
    """Bytes per second: digits with an optional K, M or G (powers of 1024)."""
    digits, unit = (text[:-1], text[-1].upper()) if text[-1:].isalpha() else (text, "")
    if not digits.isdigit() or unit not in _RATE_UNITS:
        raise argparse.ArgumentTypeError(f"must be bytes per second, e.g. 0, 5000000, 512K, 20M or 1G, got {text!r}")
    return int(digits) * _RATE_UNITS[unit]


_RATE_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}


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
        with on_interrupt(reactor, lambda: command[0].cancel()):  # a seed installs its own while it runs
            command.append(Deferred.fromCoroutine(run(reactor, args)))
            raise SystemExit(await command[0])

    react(lambda reactor: Deferred.fromCoroutine(start(reactor)))


if __name__ == "__main__":
    main()
