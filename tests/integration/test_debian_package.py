"""The Debian package, built and used the way an administrator uses it.

The package is built from a copy of this checkout (tracked and new files, as a clean clone would
have them), linted and inspected; then it is installed with apt into Debian's own python3, the
systemd unit's exact ``ExecStart`` runs and answers ``/api/hostname``, an upgrade keeps an edited
configuration, and a purge removes everything the package brought.  This machine has no systemd
as PID 1, so the unit is checked with ``systemd-analyze verify`` and its command line is run
directly, with the environment systemd gives services.

Needs root and the Debian packages of ``scripts/bootstrap --test`` (plus ``sudo`` for
``visudo``); the package must not be installed beforehand.  Costs about 35 seconds.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

from twisted.trial.unittest import SynchronousTestCase

import orchagent
from orchagent.config import Config
from orchagent.connections import RESERVED_FILES
from testbed.agent import REPO, free_port
from tests.support.root import requires_root

#: The PATH systemd gives a system service, which is also sudo's secure_path on Debian.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SERVICE_ENV = {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"}
#: No pyenv or virtualenv: the build and apt must see Debian's python3 only.
DEBIAN_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": os.environ.get("HOME", "/root"),
    "DEBIAN_FRONTEND": "noninteractive",
}
APT = ["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=300"]

CONFFILE = "/etc/orchagent/orchagent.conf.json"
CTL = "/usr/bin/orchagent-ctl"
STATE_DIRECTORY = "/var/lib/orchagent"
AUDIT_DIRECTORY = "/var/log/orchagent"
PLUGINS = "/usr/lib/python3/dist-packages/twisted/plugins"
ENABLED_LINK = "/etc/systemd/system/multi-user.target.wants/orchagent.service"
#: Unit settings that give the service its own mount namespace.
MOUNT_NAMESPACE_OPTIONS = {
    "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "PrivateMounts", "ReadOnlyPaths",
    "ReadWritePaths", "InaccessiblePaths", "TemporaryFileSystem", "BindPaths", "BindReadOnlyPaths",
    "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups",
    "ProtectProc", "ProcSubset", "MountFlags", "RootDirectory", "RootImage",
}
#: For a service with User=, each of these implies NoNewPrivileges=yes (systemd.exec(5)), and
#: sudo cannot work under NoNewPrivileges.
IMPLY_NO_NEW_PRIVILEGES = {
    "NoNewPrivileges", "LockPersonality", "MemoryDenyWriteExecute", "RestrictAddressFamilies",
    "RestrictNamespaces", "RestrictRealtime", "RestrictSUIDSGID", "SystemCallArchitectures",
    "SystemCallFilter", "SystemCallLog", "ProtectClock", "ProtectHostname",
}
SUDO_TOOLS = {"lvs", "lvremove", "blkid", "mount", "umount", "btrfs", "du", "mysqlbinlog"}


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run with Debian's environment; the failure message carries the whole output."""
    result = subprocess.run(argv, env=DEBIAN_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", **kwargs)
    if result.returncode != 0:
        raise AssertionError(f"{shlex.join(argv)} exited {result.returncode}:\n{result.stdout[-6000:]}")
    return result


def copy_checkout(destination: str) -> None:
    """The files a clean clone plus the uncommitted work would have: nothing ignored."""
    names = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO,
                           check=True, stdout=subprocess.PIPE).stdout.decode().split("\0")
    for name in filter(None, names):
        source = os.path.join(REPO, name)
        if os.path.lexists(source):  # tracked but deleted in the work tree: not part of it
            os.makedirs(os.path.join(destination, os.path.dirname(name)), exist_ok=True)
            shutil.copy2(source, os.path.join(destination, name), follow_symlinks=False)


def package_status() -> str:
    """dpkg's two-letter state of orchagent: "ii" installed, "rc" config left, "" unknown."""
    result = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", "orchagent"],
                            env=DEBIAN_ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    status = result.stdout.strip() if result.returncode == 0 else ""
    return "" if status == "un" else status


def plugin_cache_mentions_orchagent() -> bool:
    path = os.path.join(PLUGINS, "dropin.cache")
    if not os.path.exists(path):
        return False
    with open(path, "rb") as f:
        return b"orchagent_plugin" in f.read()


def exec_start(unit_path: str) -> list[str]:
    with open(unit_path) as f:
        lines = [line.strip() for line in f if line.startswith("ExecStart=")]
    if len(lines) != 1:
        raise AssertionError(f"{unit_path} must have exactly one ExecStart=, has {lines}")
    return shlex.split(lines[0].removeprefix("ExecStart="))


def get(url: str, deadline: float, process: subprocess.Popen) -> bytes:
    """GET ``url``, retrying until the agent listens, it dies or the deadline passes."""
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read()
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@requires_root("installing, upgrading and purging the package with dpkg")
class DebianPackageTests(SynchronousTestCase):
    """The built .deb: unit tests on Debian's Twisted, lintian-clean, clean contents, install/upgrade/purge."""

    deb: str
    build_log: str

    @classmethod
    def setUpClass(cls) -> None:
        cls.workdir = tempfile.mkdtemp(prefix="orchagent-deb-")
        source = os.path.join(cls.workdir, "orchagent")
        try:
            copy_checkout(source)
            cls.build_log = run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=source).stdout
        except BaseException:
            shutil.rmtree(cls.workdir)
            raise
        [deb] = [name for name in os.listdir(cls.workdir) if name.endswith("_all.deb")]
        cls.deb = os.path.join(cls.workdir, deb)

    @classmethod
    def tearDownClass(cls) -> None:
        shutil.rmtree(cls.workdir)

    def test_build_runs_the_unit_tests_on_debians_twisted(self) -> None:
        twisted_version = run(["dpkg-query", "-W", "-f=${Version}", "python3-twisted"]).stdout
        upstream = twisted_version.split("-")[0].split(":")[-1]
        self.assertIn(f"unit tests run on Twisted {upstream} from /usr/lib/python3/dist-packages/twisted/",
                      self.build_log)
        self.assertRegex(self.build_log, r"\n\d+ passed")
        self.assertNotRegex(self.build_log, r"\d+ (failed|error)")

    def test_lintian_reports_no_errors(self) -> None:
        result = subprocess.run(["lintian", "--pedantic", "--info", self.deb], env=DEBIAN_ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        errors = [line for line in result.stdout.splitlines() if line.startswith("E:")]
        self.assertEqual(errors, [], result.stdout)

    def test_contents_ship_the_plugin_but_no_caches_or_test_debris(self) -> None:
        listing = run(["dpkg-deb", "-c", self.deb]).stdout.splitlines()
        modes = {line.split()[-1].removeprefix("."): line.split()[0] for line in listing}
        paths = set(modes)
        self.assertIn(PLUGINS + "/orchagent_plugin.py", paths)
        for path in paths:
            parts = path.split("/")
            self.assertFalse(
                {"dropin.cache", ".hypothesis", ".pytest_cache", "__pycache__"} & set(parts)
                or any(part.startswith("_trial_temp") or part in ("tests", "testbed", "bench") for part in parts),
                f"{path} must not be in the package")
        self.assertNotIn("/usr/lib/python3/dist-packages/twisted/__init__.py", paths)
        self.assertNotIn(PLUGINS + "/__init__.py", paths)
        self.assertEqual(modes[CONFFILE], "-rw-r-----")
        self.assertIn("/usr/share/doc/orchagent/examples/orchagent.sudoers.example", paths)
        self.assertIn("/etc/logrotate.d/orchagent", paths)
        self.assertEqual(modes[AUDIT_DIRECTORY + "/"], "drwxr-x---")
        self.assertEqual(modes[CTL], "-rwxr-xr-x")  # the console script of setup.py

        control = os.path.join(self.workdir, "control")
        run(["dpkg-deb", "-e", self.deb, control])
        with open(os.path.join(control, "conffiles")) as f:
            self.assertEqual(sorted(f.read().split()), ["/etc/logrotate.d/orchagent", CONFFILE])
        with open(os.path.join(control, "postinst")) as f:  # no systemd here to watch it happen
            self.assertIn("_dh_action=restart", f.read(), "an upgrade must restart a running service")
        with open(os.path.join(control, "triggers")) as f:
            self.assertIn("activate-noawait twisted-plugins-cache", f.read().splitlines())
        depends = run(["dpkg-deb", "-f", self.deb, "Depends"]).stdout
        for package in ("python3-twisted (>= 22.4)", "python3-treq (>= 22.2)", "python3-openssl",
                        "python3-service-identity", "python3-attr", "python3-prometheus-client",
                        "python3-zstandard (>= 0.20)"):
            self.assertIn(package, depends)

    def test_install_run_upgrade_and_purge(self) -> None:
        self.assertEqual(package_status(), "", "orchagent is installed on this machine; this test installs "
                         "and purges it, so run it where it is not (apt-get purge orchagent)")
        for path in ("/etc/orchagent", STATE_DIRECTORY):
            self.assertFalse(os.path.lexists(path), f"{path} exists before the package is installed")
        mysql_before = sorted(os.listdir("/var/lib/mysql")) if os.path.isdir("/var/lib/mysql") else None
        agent = None
        try:
            run(APT + ["install", "./" + os.path.basename(self.deb)], cwd=self.workdir)
            self.assertEqual(package_status(), "ii")
            files = run(["dpkg-query", "-L", "orchagent"]).stdout.splitlines()
            self.assertTrue(plugin_cache_mentions_orchagent(), "twisted-plugins-cache was not triggered")
            self.assertTrue(os.path.islink(ENABLED_LINK))

            [unit] = [path for path in files if path.endswith("/system/orchagent.service")]
            argv = exec_start(unit)
            help_text = subprocess.run([argv[0], "orchagent", "--help"], env=SERVICE_ENV, cwd="/",
                                       check=True, stdout=subprocess.PIPE, text=True).stdout
            self.assertIn("--config", help_text)
            version = subprocess.run([argv[0], "orchagent", "--version"], env=SERVICE_ENV, cwd="/",
                                     check=True, stdout=subprocess.PIPE, text=True).stdout
            self.assertEqual(version, f"orchagent {orchagent.__version__}\n")
            self.assertEqual(run(["dpkg-deb", "-f", self.deb, "Version"]).stdout.strip(), orchagent.__version__,
                             "debian/changelog and orchagent.__version__ must name the same version")
            verify = subprocess.run(["systemd-analyze", "verify", unit], env=DEBIAN_ENV,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            self.assertEqual((verify.returncode, verify.stdout), (0, ""))

            with open(CONFFILE) as f:
                config = json.load(f)
            self.assertEqual(config["StateDirectory"], STATE_DIRECTORY)
            port = free_port()
            config.update(HTTPBindAddress="127.0.0.1", HTTPPort=port, AgentHostname="orchagent-deb-test")
            edited = json.dumps(config, indent=2)
            with open(CONFFILE, "w") as f:
                f.write(edited)

            log_path = os.path.join(self.workdir, "agent.log")
            with open(log_path, "wb") as log:
                agent = subprocess.Popen(argv, env=SERVICE_ENV, cwd="/", stdout=log, stderr=subprocess.STDOUT)
            try:
                body = get(f"http://127.0.0.1:{port}/api/hostname", time.monotonic() + 30, agent)
            except OSError as e:
                with open(log_path, errors="replace") as log:
                    raise AssertionError(f"{shlex.join(argv)}: {e}\n{log.read()}") from None
            self.assertEqual(json.loads(body), "orchagent-deb-test")
            # orchagent-ctl as installed, on Debian's Twisted and treq, against the installed agent
            ctl_help = subprocess.run([CTL, "--help"], env=SERVICE_ENV, cwd="/", check=True,
                                      stdout=subprocess.PIPE, text=True).stdout
            self.assertIn("seed-status", ctl_help)
            ctl_status = subprocess.run([CTL, "--token-file", config["TokenHintFile"], "--json", "status",
                                         f"127.0.0.1:{port}"], env=SERVICE_ENV, cwd="/", stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
            self.assertEqual(ctl_status.returncode, 0, ctl_status.stdout)
            self.assertEqual(json.loads(ctl_status.stdout)["Hostname"], "orchagent-deb-test")
            self.assertEqual(stat.S_IMODE(os.stat(STATE_DIRECTORY).st_mode), 0o700)
            with self.assertRaises(urllib.error.HTTPError):  # refused: no token
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/mysql-stop", timeout=10)
            with open(config["AuditLogFile"]) as f:
                self.assertEqual([(line["route"], line["status"]) for line in map(json.loads, f)],
                                 [("/api/mysql-stop", 401)])
            run(["logrotate", "--debug", "/etc/logrotate.d/orchagent"])
            agent.send_signal(signal.SIGTERM)
            self.assertEqual(agent.wait(30), 0)
            with open(log_path, errors="replace") as log:
                self.assertIn("orchagent listening on", log.read())  # logs reach stdout, i.e. the journal

            run(APT + ["install", "--reinstall", "./" + os.path.basename(self.deb)], cwd=self.workdir)
            with open(CONFFILE) as f:
                self.assertEqual(f.read(), edited, "an upgrade must keep the administrator's configuration")
            self.assertTrue(os.path.isdir(STATE_DIRECTORY), "only a purge removes the state directory")

            run(APT + ["purge", "orchagent"])
            self.assertEqual(package_status(), "")
            ours = ("/etc/orchagent", STATE_DIRECTORY, AUDIT_DIRECTORY, "/usr/share/doc/orchagent",
                    "/usr/lib/python3/dist-packages/orchagent")  # directories shared with others stay
            left = [path for path in files + [STATE_DIRECTORY, AUDIT_DIRECTORY, ENABLED_LINK]
                    if os.path.lexists(path) and (not os.path.isdir(path) or path.startswith(ours))]
            self.assertEqual(left, [])
            plugin_bytecode = os.path.join(PLUGINS, "__pycache__")
            if os.path.isdir(plugin_bytecode):
                self.assertEqual([name for name in os.listdir(plugin_bytecode)
                                  if name.startswith("orchagent")], [])
            self.assertFalse(plugin_cache_mentions_orchagent(), "the plugin cache still lists orchagent")
            if mysql_before is not None:
                self.assertEqual(sorted(os.listdir("/var/lib/mysql")), mysql_before)
        finally:
            if agent is not None and agent.poll() is None:
                agent.kill()
                agent.wait()
            if package_status():
                subprocess.run(APT + ["purge", "orchagent"], env=DEBIAN_ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)


class UnitFileAndExamplesTests(SynchronousTestCase):
    """The shipped unit and examples, checked from the source tree (no build needed)."""

    def test_unit_keeps_the_host_mount_namespace(self) -> None:
        """Snapshots the agent mounts must be visible to the host and to the mysqld it starts."""
        with open(os.path.join(REPO, "debian", "orchagent.service")) as f:
            settings = [line.strip() for line in f if "=" in line and not line.startswith("#")]
        for setting in ("Restart=on-failure", "StateDirectory=orchagent", "StateDirectoryMode=0700"):
            self.assertIn(setting, settings)
        [open_files] = [int(line.split("=")[1]) for line in settings if line.startswith("LimitNOFILE=")]
        config = Config()
        self.assertGreater(open_files, config.http_max_connections + config.seed_transfer_max_connections + RESERVED_FILES,
                           "LimitNOFILE must leave room above the connection caps")
        private_mounts = [line for line in settings if line.split("=")[0] in MOUNT_NAMESPACE_OPTIONS]
        self.assertEqual(private_mounts, [])

    def test_unprivileged_drop_in_verifies_and_lets_sudo_work(self) -> None:
        units = tempfile.mkdtemp(prefix="orchagent-unit-")
        self.addCleanup(shutil.rmtree, units)
        unit = os.path.join(units, "orchagent.service")
        shutil.copy(os.path.join(REPO, "debian", "orchagent.service"), unit)
        os.mkdir(unit + ".d")
        drop_in = os.path.join(REPO, "debian", "orchagent-unprivileged.conf.example")
        shutil.copy(drop_in, os.path.join(unit + ".d", "unprivileged.conf"))
        verify = subprocess.run(["systemd-analyze", "verify", unit],
                                env=dict(DEBIAN_ENV, SYSTEMD_UNIT_PATH=units + ":"),  # finds the drop-in
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.assertEqual((verify.returncode, verify.stdout), (0, ""))

        def settings(path: str) -> dict[str, str]:
            with open(path) as f:
                return dict(line.strip().split("=", 1) for line in f
                            if "=" in line and not line.startswith("#"))

        hardening = IMPLY_NO_NEW_PRIVILEGES & set(settings(unit))
        undone = {key for key, value in settings(drop_in).items() if value in ("", "no")}
        self.assertEqual(settings(drop_in)["User"], "orchagent")
        self.assertEqual(hardening - undone, set(), "the unprivileged drop-in must switch these off for sudo")

    def test_sudoers_example_is_valid_and_names_the_sudo_tools(self) -> None:
        example = os.path.join(REPO, "debian", "orchagent.sudoers.example")
        run(["visudo", "-c", "-f", example])
        with open(example) as f:
            text = f.read().replace("\\\n", " ")
        [tools_line] = [line for line in text.splitlines() if line.startswith("Cmnd_Alias ORCHAGENT_TOOLS")]
        tools = [path.strip() for path in tools_line.split("=", 1)[1].split(",")]
        self.assertEqual({os.path.basename(path) for path in tools}, SUDO_TOOLS)
        for path in tools:  # each must be where sudo's secure_path finds it (lvm2 is not installed here)
            if os.path.basename(path) not in ("lvs", "lvremove"):
                self.assertEqual(shutil.which(os.path.basename(path), path=SYSTEM_PATH), path)
