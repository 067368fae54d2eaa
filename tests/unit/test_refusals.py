"""Busy is a 503 with Retry-After, refusals are logged at WARN, and secrets never reach a message."""

import json

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from orchagent.commands import CommandFailed, CommandResult
from orchagent.errors import Busy, redact
from orchagent.token import Token
from orchagent.web.resource import ApiResource, Guard
from orchagent.web.routes import Route
from tests.support.fake_runner import command_result
from tests.support.routes import raising

TOKEN = "ab" * 32


class BusyAndRefusalLogTests(SynchronousTestCase):
    """The error funnel turns Busy into 503 + Retry-After and logs refusals with who and what."""

    def setUp(self):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        routes = (Route("GET", "/api/custom-commands/:cmd", raising(Busy("no slot; MaxConcurrentCommands", 5))),
                  Route("GET", "/api/conflict", raising(CommandFailed(_result(b"oops")))))
        self.client = StubTreq(ApiResource(routes, Guard(token=Token(TOKEN)), Clock()))

    def get(self, path):
        response = self.successResultOf(self.client.get("http://agent" + path))
        return response, self.successResultOf(self.client.content(response))

    def warnings(self):
        return [formatEvent(e) for e in self.events
                if e.get("log_level") == LogLevel.warn and e.get("log_namespace", "").startswith("orchagent.web")]

    def test_busy_is_503_with_retry_after_in_the_envelope(self):
        response, body = self.get(f"/api/custom-commands/nap?token={TOKEN}")
        self.assertEqual((response.code, response.headers.getRawHeaders("retry-after")), (503, ["5"]))
        self.assertEqual(json.loads(body), {"Code": "ERROR", "Message": "no slot; MaxConcurrentCommands",
                                            "Details": None})

    def test_refusals_and_failures_are_warned_with_client_and_path_never_the_token(self):
        self.get(f"/api/custom-commands/nap?token={TOKEN}")
        self.get("/api/custom-commands/nap?token=" + "cd" * 32)
        self.get(f"/api/conflict?token={TOKEN}")
        self.get(f"/api/nosuch?token={TOKEN}")  # a 404 is the client's business: not warned
        warnings = self.warnings()
        self.assertEqual(len(warnings), 3, warnings)
        self.assertTrue(warnings[0].startswith("GET /api/custom-commands/nap from 127.0.0.1 -> 503: no slot"),
                        warnings)
        self.assertTrue(warnings[1].startswith("GET /api/custom-commands/nap from 127.0.0.1 -> 401: "), warnings)
        self.assertTrue(warnings[2].startswith("GET /api/conflict from 127.0.0.1 -> 502: true failed"), warnings)
        for line in warnings:
            self.assertNotIn(TOKEN, line)
            self.assertNotIn("cdcd", line)


def _result(stderr: bytes) -> CommandResult:
    return command_result("true", exit_code=1, stderr=stderr)


class RedactionTests(SynchronousTestCase):
    """Configured secrets and password-looking text are replaced before a message is built."""

    def test_configured_secrets_are_replaced_longest_first(self):
        self.assertEqual(redact("seed secret s3cr3t-long, token s3cr3t", ["s3cr3t", "s3cr3t-long", ""]),
                         "seed secret <redacted>, token <redacted>")

    def test_password_looking_text(self):
        for text, expected in [
            ("bash: -c: line 1: `mysql -uroot -phunter2 -e x'", "bash: -c: line 1: `mysql -uroot -p<redacted> -e x'"),
            ("mysqldump --password=hunter2 db", "mysqldump --password=<redacted> db"),
            ("mysqldump --password hunter2 db", "mysqldump --password <redacted> db"),
            ("connect: PASSWORD='a b' failed", "connect: PASSWORD=<redacted> failed"),
            ("seed_secret: abc", "seed_secret: <redacted>"),
            ("GET http://u:hunter2@orch:3000/api", "GET http://u:<redacted>@orch:3000/api"),
            ("CREATE USER x IDENTIFIED BY 'hunter2'", "CREATE USER x IDENTIFIED BY <redacted>"),
        ]:
            self.assertEqual(redact(text), expected)
            self.assertNotIn("hunter2", redact(text))

    def test_ordinary_messages_are_left_alone(self):
        for text in ("mkdir -p /var/tmp/x: Permission denied", "syntax error near unexpected token `('",
                     "lvs: Volume group vg0 not found", "Enter password:"):
            self.assertEqual(redact(text), text)

    def test_command_failure_message_redacts_secrets_from_stderr(self):
        stderr = (b"mysql -pfromstderr failed\nauth with SeedSecretValue refused\n" + b"x" * 600
                  + b"\nlast SeedSecretValue")
        message = str(CommandFailed(_result(stderr), ("SeedSecretValue",)))
        self.assertNotIn("SeedSecretValue", message)
        self.assertTrue(message.endswith("last <redacted>"), message)
        self.assertLess(len(message), 600)  # still capped
        self.assertNotIn("fromstderr", str(CommandFailed(_result(b"mysql -pfromstderr failed"))))
