"""Configuration loading: V1 compatibility, layering, and every error message."""

import json
import os

from twisted.trial.unittest import SynchronousTestCase

from orchagent import config as config_module
from orchagent.config import Config, ConfigError, config_keys, load_config


class ConfigTests(SynchronousTestCase):
    """Config loads V1 files unchanged and reports every bad key in one line naming file, key and problem."""

    def write(self, document, name="agent.conf.json"):
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, name)
        with open(path, "w") as f:
            f.write(document if isinstance(document, str) else json.dumps(document))
        return path

    def load(self, document, **kwargs):
        return load_config([self.write(document)], hostname=lambda: "db1.example.com", **kwargs)

    def assertConfigError(self, document, *fragments):
        path = self.write(document)
        with self.assertRaises(ConfigError) as caught:
            load_config([path], hostname=lambda: "h")
        message = str(caught.exception)
        self.assertIn(path, message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return message

    def test_v1_defaults(self):
        c = self.load({})
        self.assertEqual(c.http_port, 3002)
        self.assertEqual(c.continuous_poll_seconds, 60)
        self.assertEqual(c.resubmit_agent_interval_minutes, 60)
        self.assertEqual(c.status_endpoint, "/api/status")
        self.assertEqual(c.status_bad_seconds, 300)
        self.assertEqual(c.mysql_client_command, "mysql")
        self.assertEqual(c.http_timeout_seconds, 10)
        self.assertEqual(c.agents_servers, ())
        self.assertEqual(c.custom_commands, {})
        self.assertEqual(c.state_directory, "/var/lib/orchagent")
        self.assertEqual(c.seed_transfer_port, 21234)

    def test_v1_sample_file_loads_unchanged(self):
        c = self.load({
            "SnapshotMountPoint": "/var/tmp/mysql-mount",
            "AgentsServer": "http://orch.example.com",
            "AgentsServerPort": ":3001",
            "HTTPPort": 3002,
            "HTTPAuthUser": "",
            "HTTPAuthPassword": "",
            "UseSSL": False,
            "SSLSkipVerify": False,
            "SSLCertFile": "",
            "SSLPrivateKeyFile": "",
            "HttpTimeoutSeconds": 10,
            "SnapshotVolumesFilter": "-my-snapshot-",
            "CustomCommands": {"true": "/bin/true"},
            "MySQLDatadirCommand": "set $(grep datadir /etc/my.cnf | head -n 1 | awk -F= '{print $2}') ; echo $1",
        })
        self.assertEqual(c.agents_urls, ("http://orch.example.com:3001",))
        self.assertEqual(c.custom_commands, {"true": "/bin/true"})
        self.assertEqual(c.snapshot_volumes_filter, "-my-snapshot-")

    def test_keys_match_case_insensitively(self):
        c = self.load({"httpport": 4000, "SNAPSHOTMOUNTPOINT": "/mnt/x"})
        self.assertEqual((c.http_port, c.snapshot_mount_point), (4000, "/mnt/x"))

    def test_agents_server_accepts_a_list(self):
        c = self.load({"AgentsServer": ["http://o1", "https://o2/"], "AgentsServerPort": ":3001"})
        self.assertEqual(c.agents_urls, ("http://o1:3001", "https://o2:3001"))

    def test_agent_hostname_defaults_to_fqdn(self):
        self.assertEqual(self.load({}).agent_hostname, "db1.example.com")
        self.assertEqual(self.load({"AgentHostname": "db9"}).agent_hostname, "db9")

    def test_agent_hostname_is_never_a_loopback_name_by_default(self):
        def name(fqdn, kernel):
            return load_config([self.write({})], hostname=lambda: fqdn, kernel_hostname=lambda: kernel).agent_hostname

        self.assertEqual(name("db1.example.com", "db1"), "db1.example.com")
        # /etc/hosts mapping the FQDN to loopback makes getfqdn() answer localhost
        for loopback in ("localhost", "localhost.localdomain", "ip6-localhost", "localhost6.localdomain6",
                         "127.0.0.1", "::1", "db.localhost", ""):
            self.assertEqual(name(loopback, "db1"), "db1", loopback)
        self.assertEqual(name("localhost", "db1.example.com"), "db1.example.com")

    def test_no_usable_agent_hostname_refuses_to_start_naming_the_key(self):
        with self.assertRaises(ConfigError) as caught:
            load_config([self.write({})], hostname=lambda: "localhost", kernel_hostname=lambda: "localhost")
        self.assertEqual(len(caught.exception.problems), 1)
        self.assertTrue(caught.exception.problems[0].startswith("AgentHostname: not set"), caught.exception)
        self.assertIn("'localhost'", str(caught.exception))

    def test_explicit_loopback_agent_hostname_is_used_with_a_warning(self):
        warnings = []
        c = load_config([self.write({"AgentHostname": "127.0.0.2"})], warn=warnings.append,
                        hostname=lambda: "localhost", kernel_hostname=lambda: "localhost")
        self.assertEqual(c.agent_hostname, "127.0.0.2")
        self.assertEqual(len(warnings), 1)
        self.assertIn("AgentHostname: '127.0.0.2' is a loopback name", warnings[0])

    def test_every_problem_is_reported_one_line_each(self):
        path = self.write({"HTTPPort": "x", "UseSSL": "yes", "SeedTransferPort": 0, "MaxConcurrentSeeds": 0,
                           "StatusEndpoint": "status"})
        with self.assertRaises(ConfigError) as caught:
            load_config([path], hostname=lambda: "h")
        problems = caught.exception.problems
        self.assertEqual(str(caught.exception).splitlines(), problems)
        self.assertEqual([p.split(": ")[1] for p in problems],
                         ["HTTPPort", "UseSSL", "SeedTransferPort", "MaxConcurrentSeeds", "StatusEndpoint"])
        self.assertTrue(all(p.startswith(path + ": ") for p in problems), problems)

    def test_unknown_key_warns_with_closest_known_key(self):
        warnings = []
        c = self.load({"HTTPPrt": 1234, "Frobnicate": 1}, warn=warnings.append)
        self.assertEqual(c.http_port, 3002)
        self.assertEqual(len(warnings), 2)
        self.assertIn("HTTPPrt (did you mean HTTPPort?)", warnings[0])
        self.assertIn("unknown configuration key Frobnicate; ignored", warnings[1])

    def test_wrong_types_name_file_key_and_problem(self):
        self.assertConfigError({"HTTPPort": "3002"}, "HTTPPort", "non-negative integer", '"3002"')
        self.assertConfigError({"UseSSL": "yes"}, "UseSSL", "true or false")
        self.assertConfigError({"SSLValidOUs": "dba"}, "SSLValidOUs", "list of strings")
        self.assertConfigError({"CustomCommands": {"x": 1}}, "CustomCommands", "object mapping")
        self.assertConfigError({"SnapshotMountPoint": 5}, "SnapshotMountPoint", "must be a string")
        self.assertConfigError({"ContinuousPollSeconds": -1}, "ContinuousPollSeconds", "non-negative")

    def test_port_out_of_range(self):
        self.assertConfigError({"HTTPPort": 70000}, "HTTPPort", "from 1 to 65535", "70000")
        self.assertConfigError({"SeedTransferPort": 0}, "SeedTransferPort", "from 1 to 65535")

    def test_connection_limits_must_be_positive(self):
        for key in ("HTTPMaxConnections", "HTTPHeaderTimeoutSeconds", "SeedTransferMaxConnections",
                    "SeedHandshakeTimeoutSeconds"):
            self.assertConfigError({key: 0}, key, "at least 1")

    def test_stall_timeout_leaves_room_to_resume(self):
        for seconds in (0, 1):
            self.assertConfigError({"SeedStallTimeoutSeconds": seconds}, "SeedStallTimeoutSeconds", "at least 2",
                                   f"got {seconds}")

    def test_seed_rate_limit_is_zero_or_above_what_the_stall_timer_allows(self):
        self.assertConfigError({"SeedMaxBytesPerSecond": 1000}, "SeedMaxBytesPerSecond", "or from 65536")
        self.assertConfigError({"SeedMaxBytesPerSecond": 100_000, "SeedStallTimeoutSeconds": 10},
                               "SeedMaxBytesPerSecond", "SeedStallTimeoutSeconds", "419431")
        # each of the streams waits its turn between its batches: the minimum grows with them
        self.assertConfigError({"SeedMaxBytesPerSecond": 1_000_000, "SeedStallTimeoutSeconds": 10,
                                "SeedParallelStreams": 3}, "SeedMaxBytesPerSecond", "1258292")

    def test_ssl_without_cert_and_key(self):
        self.assertConfigError({"UseSSL": True}, "UseSSL", "SSLCertFile")
        message = self.assertConfigError({"UseSSL": True, "SSLCertFile": "/etc/hostname"},
                                         "SSLPrivateKeyFile")
        self.assertIn("UseSSL", message)

    def test_unreadable_cert_file(self):
        self.assertConfigError({"SSLCAFile": "/nonexistent/ca.pem"}, "SSLCAFile", "cannot read", "/nonexistent/ca.pem")

    def test_mutual_tls_needs_ca_and_ous(self):
        base = {"UseSSL": True, "SSLCertFile": "/etc/hostname", "SSLPrivateKeyFile": "/etc/hostname"}
        self.assertConfigError({**base, "UseMutualTLS": True}, "UseMutualTLS", "SSLCAFile")
        self.assertConfigError({**base, "UseMutualTLS": True, "SSLCAFile": "/etc/hostname"},
                               "UseMutualTLS", "SSLValidOUs")

    def test_seed_sender_certificates_need_tls_and_a_ca(self):
        ous = {"SeedTransferValidOUs": ["mysql-agents"]}
        self.assertConfigError(ous, "SeedTransferValidOUs", "UseSSL")
        base = {"UseSSL": True, "SSLCertFile": "/etc/hostname", "SSLPrivateKeyFile": "/etc/hostname"}
        self.assertConfigError({**base, **ous}, "SeedTransferValidOUs", "SSLCAFile")
        loaded = self.load({**base, **ous, "SSLCAFile": "/etc/hostname"})
        self.assertEqual(loaded.seed_transfer_valid_ous, ("mysql-agents",))

    def test_other_cross_checks(self):
        self.assertConfigError({"AgentsServer": "orch:3000"}, "AgentsServer", "http://")
        self.assertConfigError({"AgentsServerPort": "3001"}, "AgentsServerPort", '":3001"')
        self.assertConfigError({"StatusEndpoint": "status"}, "StatusEndpoint", "starting with '/'")
        self.assertConfigError({"SnapshotBackend": "zfs"}, "SnapshotBackend", '"lvm", "btrfs" or "hotbackup"')
        self.assertConfigError({"SeedCompression": "gzip"}, "SeedCompression", '"auto", "zstd" or "none"')
        self.assertEqual(self.load({"SeedCompression": "none"}).seed_compression, "none")
        self.assertConfigError({"SeedParallelStreams": 17}, "SeedParallelStreams", "0 (the agent chooses) to 16")
        self.assertEqual(self.load({"SeedParallelStreams": 16}).seed_parallel_streams, 16)
        self.assertConfigError({"HTTPAuthUser": "u"}, "HTTPAuthUser", "HTTPAuthPassword")
        self.assertConfigError({"SnapshotBackend": "btrfs"}, "BtrfsSnapshotDirectory", "absolute")

    def test_hot_backup_cross_checks(self):
        """The hotbackup backend and replication set-up name the keys they lack."""
        self.assertConfigError({"SnapshotBackend": "hotbackup"}, "HotBackupDefaultsFile", "absolute")
        self.assertConfigError({"SnapshotBackend": "hotbackup", "HotBackupDefaultsFile": "/etc/b.cnf",
                                "SnapshotVolumesFilter": "snap"}, "SnapshotVolumesFilter", "hot-backup")
        self.assertConfigError({"HotBackupTool": "mysqldump"}, "HotBackupTool", '"mariabackup" or "xtrabackup"')
        self.assertConfigError({"HotBackupPrepareMemoryMB": 1}, "HotBackupPrepareMemoryMB", "at least 16")
        self.assertConfigError({"SeedStartReplication": True}, "SeedReplicationUser")
        self.assertConfigError({"SeedStartReplication": True, "SeedReplicationUser": "repl"},
                               "SeedReplicationPasswordFile", "absolute")

    def test_invalid_json_and_non_object(self):
        self.assertConfigError("{not json", "not valid JSON")
        self.assertConfigError("[1, 2]", "must be a JSON object")

    def test_missing_explicit_file(self):
        with self.assertRaises(ConfigError) as caught:
            load_config(["/nonexistent/orchagent.json"])
        self.assertIn("/nonexistent/orchagent.json: cannot read configuration file", str(caught.exception))

    def test_v1_lookup_layers_files_and_merges_maps(self):
        first = self.write({"HTTPPort": 4000, "CustomCommands": {"a": "true"}})
        second = self.write({"HTTPPort": 5000, "CustomCommands": {"b": "false"}})
        self.patch(config_module, "DEFAULT_CONFIG_FILES", (first, "/nonexistent/skipped.json", second))
        c = load_config(hostname=lambda: "h")
        self.assertEqual(c.http_port, 5000)
        self.assertEqual(c.custom_commands, {"a": "true", "b": "false"})

    def test_error_in_layered_file_names_that_file(self):
        good = self.write({"HTTPPort": 4000})
        bad = self.write({"HTTPPort": 99999})
        self.patch(config_module, "DEFAULT_CONFIG_FILES", (good, bad))
        with self.assertRaises(ConfigError) as caught:
            load_config(hostname=lambda: "h")
        self.assertIn(f"{bad}: HTTPPort", str(caught.exception))

    def test_every_key_is_documented_in_the_readme(self):
        readme = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")
        with open(readme) as f:
            text = f.read()
        missing = [key for key in config_keys() if f"`{key}`" not in text]
        self.assertEqual(missing, [])

    def test_every_field_has_a_key(self):
        self.assertEqual(len(config_keys()), len(Config.__attrs_attrs__))
