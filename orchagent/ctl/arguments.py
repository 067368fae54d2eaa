"""``orchagent-ctl``'s command line: its subcommands, their arguments and the connection options."""

from __future__ import annotations

import argparse

from orchagent.ctl.client import DEFAULT_PORT, AgentAddress

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
