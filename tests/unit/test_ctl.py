"""orchagent-ctl without processes or network: arguments, rendering, the API client (StubTreq) and
the seed runner (scripted agents, a Clock)."""

from __future__ import annotations

import io
import json
from urllib.parse import parse_qs, urlencode

from treq.testing import StubTreq
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from orchagent.ctl import cli, progress
from orchagent.ctl.client import AgentAddress, AgentClient, CtlError, HttpStatusError, status_poll
from orchagent.ctl.seed import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, SeedRunner
from orchagent.ctl.sequence import (
    BAILING_OUT, CLEANUP, Ask, Command, Poll, SeedFailed, SeedSequence, Sleep, State)
from tests.support.deferreds import Settling

TOKEN = "s3cret-token-0123456789"


class ArgumentTests(SynchronousTestCase):
    """HOST syntax, options before or after the subcommand, and bad usage."""

    def test_host_syntax(self):
        self.assertEqual(AgentAddress.parse("db1"), AgentAddress("db1", 3002))
        self.assertEqual(AgentAddress.parse("db1.example:3003", https=True), AgentAddress("db1.example", 3003, True))
        self.assertEqual(AgentAddress.parse("[::1]:3004"), AgentAddress("::1", 3004))
        self.assertEqual(AgentAddress.parse("::1"), AgentAddress("::1", 3002))
        self.assertEqual(AgentAddress.parse("[::1]").base, "http://[::1]:3002")
        self.assertEqual(str(AgentAddress.parse("10.0.0.5:1", https=True)), "10.0.0.5:1")
        for bad in ("db1:0", "db1:99999", "db1:x", "bad host", "db1;rm", "[::1]x", ""):
            with self.assertRaises(ValueError, msg=bad):
                AgentAddress.parse(bad)

    def test_options_before_and_after_the_subcommand(self):
        args = cli.parser().parse_args(["--token", "a", "--timeout", "5", "status", "db1", "db2:3003"])
        self.assertEqual((args.token, args.timeout, args.hosts, args.json), ("a", 5.0, ["db1", "db2:3003"], False))
        args = cli.parser().parse_args(["--token", "a", "seed-status", "db1", "7", "--token", "b", "--json"])
        self.assertEqual((args.token, args.seed_id, args.json, args.follow), ("b", 7, True, False))
        args = cli.parser().parse_args(["seed", "db1", "db2", "--seed-id", "12", "--https"])
        self.assertEqual((args.source, args.target, args.seed_id, args.https, args.poll_seconds), ("db1", "db2", 12, True, 30))
        args = cli.parser().parse_args(["mysql", "stop", "db1"])
        self.assertEqual((args.command, args.action, args.host), ("mysql", "stop", "db1"))

    def test_bad_usage_exits_2_with_one_message(self):
        for argv in (["seed-status", "db1", "0"], ["seed-status", "db1", "x"], ["mysql", "restart", "db1"],
                     ["status", "no such:host"], ["status"], []):
            err = io.StringIO()
            self.patch(cli.sys, "stderr", err)
            with self.assertRaises(SystemExit) as caught:
                cli.parser().parse_args(argv)
            self.assertEqual(caught.exception.code, 2, argv)
            self.assertIn("error:", err.getvalue())

    def test_ctrl_c_outside_a_seed_exits_130_with_one_line(self):
        never = Deferred()

        class Hanging:
            def get(self, url, params):
                return never

        err = io.StringIO()
        args = cli.parser().parse_args(["--token", TOKEN, "status", "db1"])
        d = Deferred.fromCoroutine(cli.run(Clock(), args, http=Hanging(), environ={}, out=io.StringIO(), err=err))
        d.cancel()
        self.assertEqual(self.successResultOf(d), 130)
        self.assertEqual(err.getvalue(), "orchagent-ctl: interrupted\n")

    def test_tls_files_are_checked_before_any_call(self):
        parse, reactor = cli.parser().parse_args, MemoryReactorClock()
        self.assertIsNotNone(cli.http_client(parse(["status", "h"]), reactor))
        with self.assertRaises(CtlError) as caught:
            cli.http_client(parse(["--cert", "c.pem", "status", "h"]), reactor)
        self.assertEqual(str(caught.exception), "--cert and --key go together")
        junk = self.mktemp()
        with open(junk, "w") as f:
            f.write("not a certificate")
        with self.assertRaises(CtlError) as caught:
            cli.http_client(parse(["--https", "--ca", junk, "status", "h"]), reactor)
        self.assertIn("cannot load the TLS files (--ca, --cert, --key)", str(caught.exception))

    def test_token_from_option_file_or_environment(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(TOKEN + "\n")
        parse = cli.parser().parse_args
        self.assertEqual(cli.read_token(parse(["--token", "t1", "status", "h"]), {"ORCHAGENT_TOKEN": "t3"}), "t1")
        self.assertEqual(cli.read_token(parse(["--token-file", path, "status", "h"]), {}), TOKEN)
        self.assertEqual(cli.read_token(parse(["status", "h"]), {"ORCHAGENT_TOKEN": "t3\n"}), "t3")
        with self.assertRaises(CtlError) as caught:
            cli.read_token(parse(["--token-file", path + ".missing", "status", "h"]), {})
        self.assertEqual(str(caught.exception), f"--token-file {path}.missing: No such file or directory")


STATUS = {"SeedId": 7, "Role": "receive", "Mode": "built-in", "Peer": "db1", "Path": "/var/lib/mysql",
          "State": "running", "Completed": False, "Succeeded": False, "BytesDone": 50 * 2**20,
          "BytesTotal": 200 * 2**20, "FilesDone": 3, "FilesTotal": 9, "BytesPerSecond": 10 * 2**20,
          "EtaSeconds": 15, "Error": "", "StartedAt": "2026-11-29T06:00:00+00:00", "EndedAt": None}


class ProgressTests(SynchronousTestCase):
    """A bar redrawn in place on a terminal, one line per change otherwise, JSON lines with --json."""

    def test_text(self):
        self.assertEqual(progress.progress_text({"target": STATUS, "source": None}, bar=False),
                         " 25%  50.0 MiB of 200.0 MiB  10.0 MiB/s  ETA 0:15  (target running, source not started)")
        self.assertEqual(progress.human_bytes(1023), "1023 B")
        self.assertEqual(progress.human_seconds(3725), "1:02:05")

    def test_compression_and_throttle_are_shown_when_the_agents_report_them(self):
        receiver = {**STATUS, "CompressionRatio": 2.14, "MaxBytesPerSecond": 0}
        sender = {**STATUS, "Role": "send", "CompressionRatio": 2.1, "MaxBytesPerSecond": 20 * 2**20}
        self.assertEqual(progress.progress_text({"target": receiver, "source": sender}, bar=False),
                         " 25%  50.0 MiB of 200.0 MiB  10.0 MiB/s  ETA 0:15  2.1x compressed  "
                         "throttled to 20.0 MiB/s  (target running, source running)")
        # command mode and unlimited seeds report neither: the line stays as it was
        plain = {**STATUS, "CompressionRatio": None, "MaxBytesPerSecond": 0}
        self.assertNotIn("x compressed", progress.progress_text({"target": plain}, bar=False))
        self.assertNotIn("throttled", progress.progress_text({"target": plain}, bar=False))

    def test_resumes_after_dropped_connections_are_shown(self):
        receiver = {**STATUS, "Resumes": 2, "ResentBytes": 3 * 2**20}
        sender = {**STATUS, "Role": "send", "Resumes": 2, "ResentBytes": 5 * 2**20}
        self.assertIn("resumed 2x (5.0 MiB sent again)",
                      progress.progress_text({"target": receiver, "source": sender}, bar=False))
        self.assertNotIn("resumed", progress.progress_text({"target": STATUS}, bar=False))

    def test_parallel_streams_are_shown(self):
        sender = {**STATUS, "Role": "send", "Streams": 3}
        self.assertIn("3 streams", progress.progress_text({"target": {**STATUS, "Streams": 1}, "source": sender},
                                                          bar=False))
        self.assertNotIn("streams", progress.progress_text({"target": {**STATUS, "Streams": 1}}, bar=False))
        self.assertNotIn("streams", progress.progress_text({"target": STATUS}, bar=False))  # an older agent

    def test_the_senders_total_stands_in_until_the_receiver_knows_it(self):
        receiver = {**STATUS, "BytesTotal": None, "EtaSeconds": None}
        summary = progress.summary({"target": receiver, "source": {**STATUS, "Role": "send"}})
        self.assertEqual((summary["total"], summary["percent"], summary["eta"]), (200 * 2**20, 25, 15))

    def test_terminal_redraws_one_line_and_prints_steps_above_it(self):
        out = io.StringIO()
        display = progress.TerminalDisplay(out, width=200)
        display.progress({"target": STATUS})
        display.step("Copied 1/2 bytes (50%)")
        display.result(True, "seed 7 succeeded")
        bar = "[######..................]  25%  50.0 MiB of 200.0 MiB  10.0 MiB/s  ETA 0:15  (target running)"
        self.assertEqual(out.getvalue(), f"\r\x1b[K{bar}\r\x1b[KCopied 1/2 bytes (50%)\n{bar}\nseed 7 succeeded\n")

    def test_lines_only_when_something_changed(self):
        out = io.StringIO()
        display = progress.LineDisplay(out)
        display.progress({"target": STATUS})
        display.progress({"target": STATUS})
        display.progress({"target": {**STATUS, "BytesDone": 100 * 2**20}})
        self.assertEqual([line[:4] for line in out.getvalue().splitlines()], [" 25%", " 50%"])
        self.assertNotIn("\r", out.getvalue())

    def test_json_lines(self):
        out = io.StringIO()
        display = progress.make_display(out, as_json=True, is_terminal=True)
        display.step("Done")
        display.progress({"target": STATUS, "source": None})
        display.result(False, "seed 7 failed")
        events = [json.loads(line) for line in out.getvalue().splitlines()]
        self.assertEqual(events, [{"event": "step", "text": "Done"},
                                  {"event": "progress", "target": STATUS, "source": None},
                                  {"event": "result", "ok": False, "text": "seed 7 failed"}])


class FakeApi(Resource):
    """Answers /api/<path> from ``answers``: (status, JSON body); records each request."""

    isLeaf = True

    def __init__(self, answers: dict):
        super().__init__()
        self.answers = answers
        self.requests: list[tuple[str, dict]] = []

    def render_GET(self, request):
        path = request.path.decode().removeprefix("/api/")
        self.requests.append((path, parse_qs(request.uri.decode().partition("?")[2])))
        if path not in self.answers:
            return NOT_DONE_YET  # never answers
        status, body = self.answers[path]
        request.setResponseCode(status)
        return json.dumps(body).encode()


class ClientTests(Settling, SynchronousTestCase):
    """The token travels as ?token=, answers decode, every failure is one line without the token."""

    def client(self, answers: dict, token: str = TOKEN) -> tuple[AgentClient, FakeApi, Clock]:
        api, clock = FakeApi(answers), Clock()
        return AgentClient(StubTreq(api), AgentAddress("db1"), token, timeout=5, clock=clock), api, clock

    def result(self, client: AgentClient, path: str, query=()):
        return self.settle(client.get(path, query))

    def failure(self, client: AgentClient, path: str) -> CtlError:
        return self.fail_with(client.get(path), CtlError)

    def test_answer_and_token(self):
        client, api, _ = self.client({"mountlv": (200, {"IsMounted": True})})
        self.assertEqual(self.result(client, "mountlv", (("lv", "/snap shots/s1"),)), {"IsMounted": True})
        self.assertEqual(api.requests, [("mountlv", {"lv": ["/snap shots/s1"], "token": [TOKEN]})])

    def test_refused_token_and_agent_errors(self):
        client, _, _ = self.client({"mysql-du": (401, {"Code": "ERROR", "Message": "Invalid token", "Details": None}),
                                    "mountlv": (409, {"Code": "ERROR", "Message": "a snapshot is mounted",
                                                      "Details": None})})
        error = self.failure(client, "mysql-du")
        self.assertIsInstance(error, HttpStatusError)
        self.assertEqual(str(error), "db1:3002: the agent refused the token: use the one in its TokenHintFile or "
                                     "TokenFile (HTTP 401: Invalid token)")
        self.assertEqual(str(self.failure(client, "mountlv")),
                         "db1:3002: mountlv failed (HTTP 409): a snapshot is mounted")

    def test_no_answer_within_the_timeout(self):
        client, _, clock = self.client({})
        d = Deferred.fromCoroutine(client.get("mysql-du"))
        self.assertNoResult(d)
        clock.advance(5)
        self.assertEqual(str(self.failureResultOf(d, CtlError).value), "db1:3002: no answer within 5 s (--timeout)")

    def test_cancelling_is_not_a_failure_of_the_agent(self):
        client, _, clock = self.client({})
        d = Deferred.fromCoroutine(client.get("mysql-du"))
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(clock.getDelayedCalls(), [])  # the timeout timer is gone too

    def test_transport_errors_are_words_and_never_carry_the_token(self):
        class Refusing:
            def get(self, url, params):
                raise ConnectionRefusedError(f"while fetching {url}?token={TOKEN}")

        client = AgentClient(Refusing(), AgentAddress("db1"), TOKEN, timeout=5, clock=Clock())
        error = self.failure(client, "mysql-du")
        self.assertEqual(str(error), "db1:3002: connection refused: is orchagent running and listening there?")
        self.assertEqual(client.hide(f"GET http://db1/api/x?lv=1&token={TOKEN}&a=b and {TOKEN}"),
                         "GET http://db1/api/x?lv=1&token=<token>&a=b and <token>")
        self.assertEqual(AgentClient(None, AgentAddress("h"), "", timeout=1, clock=Clock()).hide("?token=abc"),
                         "?token=<token>")

    def test_status_poll_keeps_orchestrators_zero_values_for_refusals(self):
        answers = {path: (200, value) for path, value in [
            ("available-snapshots-local", []), ("available-snapshots", ["db2"]), ("lvs-snapshots", []),
            ("mount", {"IsMounted": False}), ("mysql-status", True), ("mysql-port", 3306),
            ("mysql-du", 1234), ("mysql-datadir-available-space", 99)]}
        answers["mysql-error-log-tail"] = (404, {"Code": "ERROR", "Message": "no error log", "Details": None})
        client, api, _ = self.client(answers)
        facts = self.settle(status_poll(client))
        self.assertEqual((facts.AvailableSnapshots, facts.MySQLRunning, facts.MySQLDiskUsage, facts.MySQLErrorLogTail),
                         (["db2"], True, 1234, []))
        self.assertEqual(facts.errors, {"MySQLErrorLogTail": "no error log"})
        self.assertEqual([path for path, _ in api.requests][:2], ["available-snapshots-local", "available-snapshots"])


class ScriptedAgent:
    """An AgentClient stand-in: ``respond(path)`` gives the answer (an exception is raised)."""

    def __init__(self, name: str, respond):
        self.hostname = name
        self.address = AgentAddress(name)
        self.respond = respond
        self.calls: list[str] = []

    async def get(self, path: str, query=(), token: bool = True):
        self.calls.append(path + ("?" + urlencode(query) if query else ""))
        answer = self.respond(path)
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, Deferred):
            return await answer
        return answer


POLL_ANSWERS = {"available-snapshots-local": [], "available-snapshots": [], "mysql-status": False,
                "mysql-port": 3306, "mysql-datadir-available-space": 10**9, "mysql-error-log-tail": []}
VOLUME = {"Name": "mysql-snap-1", "GroupName": "", "Path": "/snapshots/mysql-snap-1", "IsSnapshot": True,
          "SnapshotPercent": 0}
POLL = list(POLL_ANSWERS)[:2] + ["lvs-snapshots", "mount", "mysql-status", "mysql-port", "mysql-du",
                                  "mysql-datadir-available-space", "mysql-error-log-tail"]


class Hosts:
    """A source with one snapshot and a target that receives ``size`` bytes, as the clock advances."""

    def __init__(self, clock: Clock, size: int = 100, seconds: float = 4):
        self.clock, self.size, self.seconds = clock, size, seconds
        self.started_at: float | None = None
        self.aborted: set[str] = set()
        self.mounted = False
        self.roles: set[str] = set()  # the agents that have the seed
        self.source = ScriptedAgent("db1", lambda path: self.answer("source", path))
        self.target = ScriptedAgent("db2", lambda path: self.answer("target", path))

    def done(self) -> int:
        if self.started_at is None:
            return 0
        return min(self.size, int(self.size * (self.clock.seconds() - self.started_at) / self.seconds))

    def status(self, role: str):
        if role not in self.roles:
            return HttpStatusError("404", 404, "no such seed")
        aborted = role in self.aborted
        complete = aborted or self.done() == self.size
        return {**STATUS, "Role": {"source": "send", "target": "receive"}[role], "BytesDone": self.done(),
                "BytesTotal": self.size, "State": "aborted" if aborted else "succeeded" if complete else "running",
                "Completed": complete, "Succeeded": complete and not aborted, "EtaSeconds": None}

    def answer(self, role: str, path: str):
        if path == "lvs-snapshots":
            return [VOLUME] if role == "source" else []
        if path == "mount":
            mounted = role == "source" and self.mounted
            return {"IsMounted": mounted, "MySQLDiskUsage": self.size if mounted else 0}
        if path == "mysql-du":
            return self.done() if role == "target" else 5000
        if path in POLL_ANSWERS:
            return POLL_ANSWERS[path]
        if path == "mountlv":
            self.mounted = True
        elif path == "umount":
            self.mounted = False
        elif path.startswith("receive-mysql-seed-data/"):
            self.roles = {"target"}
        elif path.startswith("send-mysql-seed-data/"):
            self.roles = {"target", "source"}
            self.started_at = self.clock.seconds()
        elif path.startswith("seed-status/"):
            return self.status(role)
        elif path.startswith("seed-command-completed/"):
            return self.status(role)["Completed"]
        elif path.startswith("seed-command-succeeded/"):
            return self.status(role)["Succeeded"]
        elif path.startswith("abort-seed/"):
            if role not in self.roles:
                return HttpStatusError("404", 404, "no such seed")
            self.aborted.add(role)
        return True


class SeedRunnerTests(Settling, SynchronousTestCase):
    """orchestrator's calls in order, progress from seed-status, an early end, Ctrl-C aborting both sides."""

    def setUp(self):
        self.clock = Clock()
        self.hosts = Hosts(self.clock)
        self.out = io.StringIO()
        self.sequence = SeedSequence(7, self.hosts.target, self.hosts.source, wait_before_send=1, poll_seconds=30)
        self.runner = SeedRunner(self.sequence, progress.LineDisplay(self.out), self.clock, interval=1,
                                 abort_wait=10)
        self.result = Deferred.fromCoroutine(self.runner.run())

    def advance(self, seconds: float, step: float = 0.5) -> None:
        for _ in range(int(seconds / step)):
            self.clock.advance(step)

    def test_a_seed_as_orchestrator_runs_it_ending_as_soon_as_the_target_reports_it(self):
        self.advance(6)
        self.assertEqual(self.successResultOf(self.result), EXIT_OK)
        self.assertEqual([c for c in self.hosts.source.calls if not c.startswith("seed-status")], [
            *POLL, "mountlv?lv=%2Fsnapshots%2Fmysql-snap-1", *POLL, "send-mysql-seed-data/db2/7", "umount"])
        target = [c for c in self.hosts.target.calls if not c.startswith("seed-status")]
        self.assertEqual(target[:len(POLL) * 2 + 2], [*POLL, "delete-mysql-datadir", *POLL, "receive-mysql-seed-data/7"])
        self.assertEqual(target[-3:], ["seed-command-succeeded/7", "post-copy/?sourceHost=db1", "mysql-start"])
        self.assertEqual(target.count("seed-command-completed/7"), 2)  # the wake-up, not 30 s later
        lines = self.out.getvalue().splitlines()
        self.assertIn(" 50%", [line[:4] for line in lines])
        self.assertEqual(lines[-1], "seed 7 succeeded: 100 B from db1:3002 to db2:3002 in 5 s; "
                                    "MySQL was started on the target")

    def test_ctrl_c_aborts_on_target_then_source_and_waits_for_both(self):
        self.advance(2)
        self.assertNoResult(self.result)
        self.runner.interrupt()
        self.advance(2)
        self.assertEqual(self.successResultOf(self.result), EXIT_INTERRUPTED)
        self.assertEqual(self.hosts.aborted, {"target", "source"})
        self.assertFalse(self.hosts.mounted)
        self.assertEqual(self.hosts.source.calls[-1], "umount")
        self.assertEqual(self.out.getvalue().splitlines()[-1],
                         "seed 7 interrupted (Ctrl-C); both agents report the seed ended")
        self.assertNotIn("mysql-start", self.hosts.target.calls)

    def test_ctrl_c_before_the_source_was_asked_to_send(self):
        self.advance(0.5)  # waiting before send: only the target has the seed
        self.runner.interrupt()
        self.advance(1)
        self.assertEqual(self.successResultOf(self.result), EXIT_INTERRUPTED)
        self.assertEqual(self.hosts.aborted, {"target"})
        self.assertNotIn("send-mysql-seed-data/db2/7", self.hosts.source.calls)

    def test_a_refused_command_stops_the_seed_and_cleans_up(self):
        clock = Clock()
        hosts = Hosts(clock)
        refused = HttpStatusError("db2:3002: delete-mysql-datadir failed (HTTP 409): MySQL is running", 409, "")
        answer = hosts.answer
        hosts.target.respond = lambda path: refused if path == "delete-mysql-datadir" else answer("target", path)
        out = io.StringIO()
        runner = SeedRunner(SeedSequence(8, hosts.target, hosts.source), progress.LineDisplay(out), clock)
        self.assertEqual(self.settle(runner.run()), EXIT_FAILED)
        self.assertEqual(hosts.source.calls[-1], "umount")
        self.assertEqual(out.getvalue().splitlines()[-1],
                         "seed 8 failed: db2:3002: delete-mysql-datadir failed (HTTP 409): MySQL is running")
        self.assertEqual(hosts.aborted, set())


class SequenceTests(SynchronousTestCase):
    """executeSeed's refusals and failures carry orchestrator's own messages."""

    def run_until_failure(self, answers) -> tuple[list, SeedFailed]:
        sequence = SeedSequence(1, ScriptedAgent("t", None), ScriptedAgent("s", None))
        steps, effects, answer = sequence.steps(), [], None
        while True:
            try:
                effect = steps.send(answer)
            except SeedFailed as e:
                return effects, e
            effects.append(effect)
            answer = answers(effect)

    def facts(self, **fields):
        return type("Facts", (), {"MySQLRunning": False, "LogicalVolumes": [VOLUME], "MySQLDiskUsage": 0,
                                  "MountPoint": {"IsMounted": False, "MySQLDiskUsage": 500},
                                  "MySQLDatadirDiskFree": 10**9, **fields})()

    def test_refuses_a_running_target(self):
        effects, error = self.run_until_failure(lambda e: self.facts(MySQLRunning=True) if isinstance(e, Poll) else None)
        self.assertEqual(str(error), "MySQL is running on target host. Cowardly refusing to proceeed. "
                                     "Please stop the MySQL service")
        self.assertFalse([e for e in effects if isinstance(e, Command)])

    def test_not_enough_space_unmounts_the_source_first(self):
        effects, error = self.run_until_failure(
            lambda e: self.facts(MySQLDatadirDiskFree=10) if isinstance(e, Poll) else None)
        self.assertIn("Not enough disk space on target host t. Required: 500, available: 10", str(error))
        self.assertEqual(effects[-1], Command(effects[-1].agent, "umount", kind=CLEANUP))

    def test_ten_rounds_without_progress_abort_both_sides(self):
        def answer(effect):
            if isinstance(effect, Poll):
                return self.facts()
            if isinstance(effect, Ask):
                return False
            return None

        effects, error = self.run_until_failure(answer)
        self.assertEqual(str(error), BAILING_OUT)
        self.assertEqual(len([e for e in effects if isinstance(e, Sleep) and e.copy_loop]), 10)
        self.assertEqual([(e.path, e.kind) for e in effects[-3:]],
                         [("abort-seed/1", CLEANUP), ("abort-seed/1", CLEANUP), ("umount", CLEANUP)])
        self.assertEqual(effects[0], State("getting target agent info for t"))


class ThrottleCommandTests(SynchronousTestCase):
    """``throttle HOST ID RATE`` takes K/M/G rates, calls seed-throttle on the source, then shows the limit."""

    def test_rates(self):
        parse = cli.parser().parse_args
        self.assertEqual(parse(["throttle", "db1", "7", "20M"]).rate, 20 * 1024 * 1024)
        self.assertEqual(parse(["throttle", "db1", "7", "512k"]).rate, 512 * 1024)
        self.assertEqual(parse(["throttle", "db1", "7", "0"]).rate, 0)
        for bad in ("1.5M", "-1", "M", "20T", "", "0x10"):
            err = io.StringIO()
            self.patch(cli.sys, "stderr", err)
            with self.assertRaises(SystemExit, msg=bad):
                parse(["throttle", "db1", "7", bad])
            self.assertIn("bytes per second", err.getvalue())

    def test_calls_the_route_and_shows_the_new_limit(self):
        api = FakeApi({"seed-throttle/7": (200, True),
                       "seed-status/7": (200, {**STATUS, "MaxBytesPerSecond": 20 * 1024 * 1024,
                                               "BytesPerSecond": 4 * 1024 * 1024})})
        out, err = io.StringIO(), io.StringIO()
        args = cli.parser().parse_args(["--token", TOKEN, "throttle", "db1", "7", "20M"])
        code = self.successResultOf(Deferred.fromCoroutine(
            cli.run(Clock(), args, http=StubTreq(api), environ={}, out=out, err=err)))
        self.assertEqual((code, err.getvalue()), (EXIT_OK, ""))
        self.assertEqual(api.requests[0], ("seed-throttle/7", {"bytesPerSecond": ["20971520"], "token": [TOKEN]}))
        self.assertEqual(out.getvalue(), "seed 7 on db1:3002: sending at most 20.0 MiB/s; now 4.0 MiB/s on average\n")


class SeedStatusCommandTests(SynchronousTestCase):
    """``seed-status HOST ID`` prints the seed with its compression ratio and throttle; --json passes all keys."""

    def run_ctl(self, *argv: str) -> str:
        sender = {**STATUS, "Role": "send", "Peer": "db2", "CompressionRatio": 2.14,
                  "MaxBytesPerSecond": 20 * 1024 * 1024, "WireBytes": 100, "DataBytes": 214}
        out, err = io.StringIO(), io.StringIO()
        args = cli.parser().parse_args(["--token", TOKEN, "seed-status", "db1", "7", *argv])
        code = self.successResultOf(Deferred.fromCoroutine(cli.run(
            Clock(), args, http=StubTreq(FakeApi({"seed-status/7": (200, sender)})), environ={}, out=out, err=err)))
        self.assertEqual((code, err.getvalue()), (EXIT_OK, ""))
        return out.getvalue()

    def test_text(self):
        self.assertEqual(self.run_ctl().splitlines()[:2], [
            "seed 7 on db1:3002: send (built-in), peer db2, running",
            "   25%  50.0 MiB of 200.0 MiB  10.0 MiB/s  ETA 0:15  2.1x compressed  throttled to 20.0 MiB/s  "
            "(send running)"])

    def test_json(self):
        status = json.loads(self.run_ctl("--json"))
        self.assertEqual((status["CompressionRatio"], status["MaxBytesPerSecond"], status["WireBytes"],
                          status["DataBytes"]), (2.14, 20 * 1024 * 1024, 100, 214))
