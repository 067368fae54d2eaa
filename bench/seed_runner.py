"""Run one side of a built-in seed transfer in this process, for benchmarks and demos.

    .venv/bin/python bench/seed_runner.py receive --port 21234 --seed-id 1 --datadir /tmp/target
    .venv/bin/python bench/seed_runner.py send --host 127.0.0.1 --port 21234 --seed-id 1 --source /tmp/src

The secret comes from the environment (ORCHAGENT_SEED_SECRET).  The receiver prints
``listening`` once it accepts connections.  Each side ends by printing one JSON line: outcome,
seconds from authentication to the end, files, bytes, the process's peak RSS and CPU time (all of
it, and what the transfer itself used: without starting Python and importing Twisted, which a
running agent has done long before).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys

from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ServerEndpoint

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from orchagent import allocator  # noqa: E402
from orchagent.config import Config  # noqa: E402
from orchagent.seed.receiver import SeedReceiverServer  # noqa: E402
from orchagent.seed.sender import send_tree  # noqa: E402
from orchagent.tls import client_creator, seed_server_options  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(reactor, args) -> dict:
    cpu_at_start = cpu_seconds()  # Python, Twisted and the engine are imported by now
    secret = os.environ["ORCHAGENT_SEED_SECRET"].encode()
    # with --tls-*: TLS set up exactly as an agent with UseSSL sets it up
    config = Config(use_ssl=True, ssl_cert_file=args.tls_cert, ssl_private_key_file=args.tls_key,
                    ssl_ca_file=args.tls_ca)
    if args.role == "receive":
        tls = seed_server_options(config) if args.tls_cert else None
        server = SeedReceiverServer(reactor, secret=secret, stall_timeout=args.stall_timeout, tls=tls)
        transfer = server.arm(args.seed_id, args.datadir)
        await server.listen(TCP4ServerEndpoint(reactor, args.port, interface=args.bind))
        print("listening", flush=True)
    else:
        tls = client_creator(config, args.tls_host) if args.tls_ca else None
        transfer = send_tree(reactor, args.host, args.port, args.seed_id, args.source, secret=secret,
                             stall_timeout=args.stall_timeout, tls=tls, compression=args.compression)
    error = None
    try:
        await transfer.when_done()
    except Exception as e:  # reported, not raised: the parent reads the JSON line
        error = str(e)
    if args.role == "receive":
        await server.stopListening()
    progress = transfer.progress
    return {
        "role": args.role,
        "ok": error is None,
        "error": error,
        "seconds": (progress.finished or 0) - (progress.started or 0),
        "files": progress.files_done,
        "bytes": progress.bytes_done,
        "wire_bytes": progress.wire_bytes,
        "data_bytes": progress.data_bytes,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "cpu_seconds": round(cpu_seconds(), 2),
        "transfer_cpu_seconds": round(cpu_seconds() - cpu_at_start, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["send", "receive"])
    parser.add_argument("--port", type=int, default=21234)
    parser.add_argument("--seed-id", default="1")
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--datadir")
    parser.add_argument("--source")
    parser.add_argument("--stall-timeout", type=float, default=60)
    parser.add_argument("--compression", default="auto", choices=["auto", "zstd", "none"], help="sender: SeedCompression")
    parser.add_argument("--tls-cert", default="", help="receiver: its certificate (PEM), for TLS")
    parser.add_argument("--tls-key", default="", help="receiver: its private key (PEM)")
    parser.add_argument("--tls-ca", default="", help="sender: the CA to verify the receiver with, for TLS")
    parser.add_argument("--tls-host", default="localhost", help="sender: the name the receiver's certificate must carry")
    args = parser.parse_args()

    async def body(reactor):
        print(json.dumps(await run(reactor, args)), flush=True)

    allocator.tune_for_large_buffers()  # as the agent does when it starts
    task.react(lambda reactor: defer.Deferred.fromCoroutine(body(reactor)))


if __name__ == "__main__":
    main()
