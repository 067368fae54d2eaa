"""``twistd orchagent`` options and the service tree they produce."""

import json
import os

from twisted.application.service import IServiceCollection
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from orchagent import tap
from orchagent.registrar import Registrar
from orchagent.seed.manager import SeedManager
from orchagent.service import ApiListener, CleanExitOnSignals, CommandReaper


class TapTests(SynchronousTestCase):
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

    def test_bad_config_is_a_usage_error_naming_file_and_key(self):
        path = self.config_file({"UseSSL": True})
        with self.assertRaises(usage.UsageError) as caught:
            tap.Options().parseOptions(["--config", path])
        self.assertIn(f"{path}: UseSSL: UseSSL needs SSLCertFile", str(caught.exception))

    def test_unreadable_tls_material_is_a_usage_error(self):
        junk = self.config_file({})
        path = self.config_file({"UseSSL": True, "SSLCertFile": junk, "SSLPrivateKeyFile": junk})
        with self.assertRaises(usage.UsageError) as caught:
            tap.Options().parseOptions(["--config", path])
        self.assertIn("cannot load the TLS files", str(caught.exception))

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

    def test_bad_token_file_is_a_usage_error(self):
        token_path = self.mktemp()
        with open(token_path, "w") as f:
            f.write("operator-chosen-token-1234\n")
        os.chmod(token_path, 0o644)
        with self.assertRaises(usage.UsageError) as caught:
            tap.Options().parseOptions(["--config", self.config_file({"TokenFile": token_path})])
        self.assertIn(f"TokenFile {token_path!r}: has mode 0644", str(caught.exception))
