"""``twistd orchagent`` options and the service tree they produce."""

import io
import json
import os
import sys

from twisted.application.service import IServiceCollection
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

import orchagent
from orchagent import tap
from orchagent.registrar import Registrar
from orchagent.seed.manager import SeedManager
from orchagent.service import ApiListener, CleanExitOnSignals, CommandReaper


class TapTests(SynchronousTestCase):
    """The twistd plugin reads only the given config, builds the service tree and exits with one-line problems."""

    def config_file(self, document):
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump(document, f)
        return path

    def test_config_option_reads_only_that_file(self):
        options = tap.Options()
        options.parseOptions(["--config", self.config_file({"HTTPPort": 4321, "AgentHostname": "db7"})])
        self.assertEqual((options["settings"].http_port, options["settings"].agent_hostname), (4321, "db7"))
        self.assertFalse(options["debug"])

    def test_bad_config_exits_with_every_problem_one_line_each(self):
        """SystemExit, not UsageError: twistd would print its usage text before the problem."""
        path = self.config_file({"UseSSL": True, "HTTPPort": 0})
        with self.assertRaises(SystemExit) as caught:
            tap.Options().parseOptions(["--config", path])
        self.assertEqual(caught.exception.code.splitlines(), [
            f"{path}: HTTPPort: port must be from 1 to 65535, got 0",
            f"{path}: UseSSL: UseSSL needs SSLCertFile to be set",
            f"{path}: UseSSL: UseSSL needs SSLPrivateKeyFile to be set"])

    def test_unreadable_tls_material_exits_with_the_problem(self):
        junk = self.config_file({})
        path = self.config_file({"UseSSL": True, "SSLCertFile": junk, "SSLPrivateKeyFile": junk})
        with self.assertRaises(SystemExit) as caught:
            tap.Options().parseOptions(["--config", path])
        self.assertIn("cannot load the TLS files", caught.exception.code)

    def test_version_prints_orchagents_version(self):
        output = io.StringIO()
        self.patch(sys, "stdout", output)
        with self.assertRaises(SystemExit) as caught:
            tap.Options().parseOptions(["--version"])
        self.assertEqual((caught.exception.code, output.getvalue()), (0, f"orchagent {orchagent.__version__}\n"))

    def test_service_tree(self):
        options = tap.Options()
        options.parseOptions(["--debug", "--config", self.config_file({"StateDirectory": self.mktemp()})])
        top = tap.makeService(options, reactor=MemoryReactorClock())
        kinds = [type(service) for service in IServiceCollection(top)]
        self.assertEqual(kinds, [ApiListener, Registrar, SeedManager, CommandReaper, CleanExitOnSignals])

    def test_token_file_gives_the_service_its_fixed_token(self):
        token_path = self.mktemp()
        with open(token_path, "w") as f:
            f.write("operator-chosen-token-1234\n")
        os.chmod(token_path, 0o600)
        options = tap.Options()
        options.parseOptions(["--config", self.config_file({"TokenFile": token_path})])
        self.assertEqual(options["token"].value, "operator-chosen-token-1234")

    def test_bad_token_file_stops_the_start_with_one_line(self):
        token_path = self.mktemp()
        with open(token_path, "w") as f:
            f.write("operator-chosen-token-1234\n")
        os.chmod(token_path, 0o644)
        with self.assertRaises(SystemExit) as caught:
            tap.Options().parseOptions(["--config", self.config_file({"TokenFile": token_path})])
        self.assertIn(f"TokenFile {token_path!r}: has mode 0644", str(caught.exception.code))
