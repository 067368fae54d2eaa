"""orchagent.host.mysql: facts from configured commands or option files, service commands."""

import os

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from orchagent.commands import CommandFailed
from orchagent.config import Config
from orchagent.errors import AgentError, Busy, Conflict, NotFound
from orchagent.host.liveness import STOPPED, Findings, ServerPlaces
from orchagent.host.mysql import MySQL
from tests.support.deferreds import Settling
from tests.support.fake_runner import FakeRunner
from tests.support.mysql_fakes import FakeProbe, InlineThreadsReactor


class MySQLTestCase(Settling, SynchronousTestCase):
    """A MySQL host object on the fake runner and a fake liveness probe, with its option file written per test."""

    def mysql(self, runner=None, *, my_cnf=None, compiled_datadir="/nonexistent", hostname="db1.example.com",
              probe=None, **keys):
        self.runner = runner or FakeRunner()
        self.probe = probe or FakeProbe()
        if my_cnf is not None:
            keys["mysql_config_file"] = self.write(my_cnf)
        return MySQL(Config(**keys), self.runner, InlineThreadsReactor(), hostname=lambda: hostname,
                     default_option_files=(self.mktemp(),), compiled_datadir=compiled_datadir,
                     probe_host=self.probe)

    def write(self, text: str) -> str:
        path = os.path.abspath(self.mktemp()) + ".txt"
        with open(path, "w") as f:
            f.write(text)
        return path

    def error(self, coroutine, kind=AgentError) -> str:
        return str(self.fail_with(coroutine, kind))


class DatadirTests(MySQLTestCase):
    """The datadir comes from the command, the option files or the compiled default, or is a clear error."""

    def test_from_the_command_normalised(self):
        for output, expected in [(b"/var/lib/mysql/\n", "/var/lib/mysql"), (b"//srv//db/./x/", "/srv/db/x"),
                                 (b"/", "/")]:
            mysql = self.mysql(FakeRunner({"MySQLDatadirCommand": output}), mysql_datadir_command="echo x")
            self.assertEqual(self.settle(mysql.datadir()), expected)
        self.assertEqual(self.runner.names(), ["MySQLDatadirCommand"])

    def test_command_output_must_be_one_absolute_path(self):
        for output in (b"", b"var/lib/mysql", b"/a\n/b"):
            mysql = self.mysql(FakeRunner({"MySQLDatadirCommand": output}), mysql_datadir_command="x")
            self.assertIn("MySQLDatadirCommand", self.error(mysql.datadir()))

    def test_failing_command_fails_never_the_cwd(self):
        mysql = self.mysql(FakeRunner(exit_codes={"MySQLDatadirCommand": 1}), mysql_datadir_command="false")
        self.failureResultOf(Deferred.fromCoroutine(mysql.datadir()), CommandFailed)

    def test_from_the_option_file(self):
        mysql = self.mysql(my_cnf="[mysqld]\ndatadir = /srv/mysql/data/\n")
        self.assertEqual(self.settle(mysql.datadir()), "/srv/mysql/data")
        self.assertEqual(self.runner.calls, [])

    def test_compiled_default_when_it_exists(self):
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        self.assertEqual(self.settle(self.mysql(my_cnf="[mysqld]\n", compiled_datadir=directory).datadir()),
                         directory)

    def test_undeterminable_datadir_is_a_clear_error(self):
        message = self.error(self.mysql(my_cnf="[client]\ndatadir=/x\n").datadir())
        self.assertIn("no datadir", message)
        self.assertIn("MySQLDatadirCommand", message)

    def test_broken_option_file(self):
        self.assertIn("option files", self.error(self.mysql(my_cnf="datadir=/x\n").datadir()))

    def test_configured_option_file_must_exist(self):
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)  # the compiled-in datadir exists, but MySQLConfigFile was asked for
        mysql = self.mysql(compiled_datadir=directory, mysql_config_file="/nonexistent/my.cnf")
        self.assertIn("/nonexistent/my.cnf does not exist", self.error(mysql.datadir()))


class PortTests(MySQLTestCase):
    """The port comes from the command or the option files, and nonsense output is an error."""

    def test_command(self):
        mysql = self.mysql(FakeRunner({"MySQLPortCommand": b" 3307\n"}), mysql_port_command="x")
        self.assertEqual(self.settle(mysql.port()), 3307)

    def test_command_printing_nonsense(self):
        for output in (b"", b"abc", b"70000", b"33\xc2\xb2"):
            mysql = self.mysql(FakeRunner({"MySQLPortCommand": output}), mysql_port_command="x")
            self.assertIn("MySQLPortCommand printed", self.error(mysql.port()))

    def test_option_file_and_default(self):
        self.assertEqual(self.settle(self.mysql(my_cnf="[mariadb]\nport=3399\n").port()), 3399)
        self.assertEqual(self.settle(self.mysql(my_cnf="[mysqld]\n").port()), 3306)
        self.assertIn("port in", self.error(self.mysql(my_cnf="[mysqld]\nport=x\n").port()))


class ErrorLogTests(MySQLTestCase):
    """The error log is found where the server writes it (log-error, datadir, hostname), or the config key is named."""

    def path(self, my_cnf, **keys):
        return self.settle(self.mysql(my_cnf=my_cnf, **keys).error_log_path())

    def test_absolute_log_error(self):
        self.assertEqual(self.path("[mysqld]\nlog_error=/var/log/mysql/error.log\nlog_error_verbosity=3\n"),
                         "/var/log/mysql/error.log")

    def test_relative_log_error_is_in_the_datadir_even_from_the_command(self):
        runner = FakeRunner({"MySQLDatadirCommand": b"/data/mysql/\n"})
        path = self.settle(self.mysql(runner, my_cnf="[mysqld]\nlog-error=./host.err\n",
                                      mysql_datadir_command="x").error_log_path())
        self.assertEqual(path, "/data/mysql/host.err")

    def test_the_server_adds_err_to_names_without_extension(self):
        self.assertEqual(self.path("[mysqld]\ndatadir=/d\nlog_error=mylog\n"), "/d/mylog.err")

    def test_default_is_the_short_hostname_in_the_datadir(self):
        self.assertEqual(self.path("[mysqld]\ndatadir=/d\n"), "/d/db1.err")
        self.assertEqual(self.path("[mysqld]\ndatadir=/d\nlog-error\n"), "/d/db1.err")
        self.assertEqual(self.path("[mysqld]\ndatadir=/d\nlog_basename=node7\n"), "/d/node7.err")

    def test_configured_file_wins(self):
        self.assertEqual(self.path("[mysqld]\nlog_error=/x.err\n", mysql_error_log_file="/var/log/my.err"),
                         "/var/log/my.err")

    def test_stderr_needs_the_configured_file(self):
        self.assertIn("MySQLErrorLogFile", self.error(self.mysql(my_cnf="[mysqld]\nlog_error=stderr\n")
                                                      .error_log_path()))

    def test_tail(self):
        log = self.write("".join(f"line {i}\n" for i in range(30)))
        mysql = self.mysql(my_cnf=f"[mysqld]\nlog_error={log}\n")
        self.assertEqual(self.settle(mysql.error_log_tail(2)), ["line 28", "line 29"])
        self.error(self.mysql(my_cnf="[mysqld]\nlog_error=/nonexistent.err\n").error_log_tail(2), NotFound)


class ServiceTests(MySQLTestCase):
    """mysql-status and the guards: the status command and the host probe, unknown counting as running."""

    MY_CNF = "[mysqld]\ndatadir=/srv/db\n"
    FOUND = Findings(found=("pid 7 (/usr/sbin/mariadbd) has /srv/db/ibdata1 open",))
    BLIND = Findings(unchecked=("cannot read the open files of 3 process(es)",))

    def state(self, mysql):
        return self.settle(mysql.liveness())

    def refusal(self, mysql) -> str:
        return self.error(mysql.require_stopped("empty the datadir"), Conflict)

    def test_command_exiting_0_is_running_without_probing(self):
        mysql = self.mysql(mysql_service_status_command="st", my_cnf=self.MY_CNF)
        self.assertTrue(self.settle(mysql.is_running()))
        self.assertEqual(self.runner.calls[0].argv[:3], ("bash", "-c", "st"))
        self.assertEqual(self.runner.calls[0].options, {"essential": True, "check": False})
        self.assertEqual(self.probe.places, [])
        self.assertIn("MySQLServiceStatusCommand exited 0", self.refusal(mysql))

    def test_command_saying_stopped_and_nothing_found_is_stopped(self):
        mysql = self.mysql(FakeRunner(exit_codes={"MySQLServiceStatusCommand": 3}), my_cnf=self.MY_CNF,
                           probe=FakeProbe(self.BLIND), mysql_service_status_command="st")
        self.assertFalse(self.settle(mysql.is_running()))
        self.settle(mysql.require_stopped("empty the datadir"))
        self.assertEqual(self.state(mysql).state, STOPPED)

    def test_evidence_beats_a_command_saying_stopped(self):
        mysql = self.mysql(FakeRunner(exit_codes={"MySQLServiceStatusCommand": 1}), my_cnf=self.MY_CNF,
                           probe=FakeProbe(self.FOUND), mysql_service_status_command="false")
        self.assertTrue(self.settle(mysql.is_running()))
        message = self.refusal(mysql)
        self.assertIn("MySQL is running", message)
        self.assertIn("MySQLServiceStatusCommand exited 1, but", message)
        self.assertIn("/srv/db/ibdata1 open", message)

    def test_unknown_commands_count_as_running(self):
        cases = {
            "timed out after 5 s": FakeRunner(timeouts=("MySQLServiceStatusCommand",)),
            "exit status 127": FakeRunner(exit_codes={"MySQLServiceStatusCommand": 127},
                                          stderr={"MySQLServiceStatusCommand": b"bash: systemctl: command not found"}),
            "cannot reach its service manager": FakeRunner(
                exit_codes={"MySQLServiceStatusCommand": 1},
                stderr={"MySQLServiceStatusCommand": b"System has not been booted with systemd as init system "
                                                     b"(PID 1). Can't operate.\nFailed to connect to bus"}),
        }
        for expected, runner in cases.items():
            mysql = self.mysql(runner, my_cnf=self.MY_CNF, mysql_service_status_command="st")
            self.assertTrue(self.settle(mysql.is_running()), expected)
            message = self.refusal(mysql)
            self.assertIn("cannot tell whether MySQL is running", message)
            self.assertIn(expected, message)
            self.assertIn("set MySQLServiceStatusCommand", message)

    def test_without_a_command_the_probe_decides_only_when_it_saw_everything(self):
        mysql = self.mysql(my_cnf=self.MY_CNF)
        self.assertFalse(self.settle(mysql.is_running()))
        self.assertEqual(self.runner.calls, [])
        mysql = self.mysql(my_cnf=self.MY_CNF, probe=FakeProbe(self.BLIND))
        self.assertTrue(self.settle(mysql.is_running()))
        self.assertIn("MySQLServiceStatusCommand is not set; cannot read the open files", self.refusal(mysql))
        mysql = self.mysql(my_cnf=self.MY_CNF, probe=FakeProbe(self.FOUND))
        self.assertIn("MySQL is running (pid 7", self.refusal(mysql))

    def test_status_never_fails(self):
        self.assertTrue(self.settle(self.mysql().is_running()))  # no datadir known: cannot tell
        self.assertEqual(self.probe.places, [])

        broken = FakeRunner(errors={"MySQLServiceStatusCommand": AgentError("cannot start")})
        mysql = self.mysql(broken, my_cnf=self.MY_CNF, mysql_service_status_command="st")
        self.assertTrue(self.settle(mysql.is_running()))
        self.assertIn("could not run: cannot start", self.refusal(mysql))

    def test_where_the_probe_looks(self):
        self.settle(self.mysql(my_cnf=self.MY_CNF).liveness())
        self.assertEqual(self.probe.places, [ServerPlaces(
            datadir="/srv/db", pid_file="/srv/db/db1.pid", socket="/run/mysqld/mysqld.sock", port=3306,
            addresses=("127.0.0.1",))])
        self.settle(self.mysql(my_cnf="[mysqld]\ndatadir=/srv/db\npid-file=/run/m.pid\nsocket=/run/m.sock\n"
                                      "port=3307\nbind-address=10.1.2.3\n").liveness())
        self.assertEqual(self.probe.places, [ServerPlaces(
            datadir="/srv/db", pid_file="/run/m.pid", socket="/run/m.sock", port=3307, addresses=("10.1.2.3",))])
        self.settle(self.mysql(my_cnf="[mysqld]\ndatadir=/srv/db\npid-file=x.pid\nbind-address=::\n"
                                      "log-basename=base\n").liveness())
        self.assertEqual(self.probe.places[0].pid_file, "/srv/db/x.pid")
        self.assertEqual(self.probe.places[0].addresses, ("127.0.0.1",))
        self.settle(self.mysql(my_cnf="[mysqld]\ndatadir=/srv/db\nlog-basename=base\n").liveness())
        self.assertEqual(self.probe.places[0].pid_file, "/srv/db/base.pid")

    def test_status_check_refused_for_want_of_a_slot_is_unknown_not_stopped(self):
        full = FakeRunner(errors={"MySQLServiceStatusCommand": Busy("no slot", 5)})
        mysql = self.mysql(full, my_cnf=self.MY_CNF, probe=FakeProbe(self.BLIND), mysql_service_status_command="st")
        self.assertTrue(self.settle(mysql.is_running()))
        self.assertIn("no slot", self.refusal(mysql))

    def test_start_and_stop_run_their_commands(self):
        mysql = self.mysql(mysql_service_start_command="start it", mysql_service_stop_command="stop it")
        self.settle(mysql.stop())
        self.settle(mysql.start())
        self.assertEqual([(c.name, c.argv) for c in self.runner.calls], [
            ("MySQLServiceStopCommand", ("bash", "-c", "stop it", "orchagent")),
            ("MySQLServiceStartCommand", ("bash", "-c", "start it", "orchagent")),
        ])

    def test_unconfigured_start_is_an_error_not_a_silent_success(self):
        self.assertIn("MySQLServiceStartCommand", self.error(self.mysql().start()))
        self.assertEqual(self.runner.calls, [])

    def test_failed_stop_propagates(self):
        mysql = self.mysql(FakeRunner(exit_codes={"MySQLServiceStopCommand": 1}), mysql_service_stop_command="x")
        self.failureResultOf(Deferred.fromCoroutine(mysql.stop()), CommandFailed)

    def test_post_copy_gets_the_source_host_in_the_environment_only(self):
        mysql = self.mysql(post_copy_command="/usr/local/bin/post-copy")
        self.settle(mysql.post_copy("db2.example.com"))
        call, = self.runner.calls
        self.assertEqual(call.argv, ("bash", "-c", "/usr/local/bin/post-copy", "orchagent"))
        self.assertEqual(call.options, {"env": {"ORCHAGENT_SOURCE_HOST": "db2.example.com"}})

    def test_post_copy_without_command_does_nothing(self):
        self.settle(self.mysql().post_copy("db2"))
        self.assertEqual(self.runner.calls, [])
