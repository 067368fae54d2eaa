"""The my.cnf parser, on Debian's real MariaDB files (tests/fixtures/mysql-etc, copied from /etc/mysql)."""

import os

from hypothesis import assume, given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from orchagent.host.optionfiles import (
    Include,
    Option,
    OptionFileError,
    is_server_group,
    parse_option_text,
    read_server_options,
)
from tests.support.mysql_fakes import FIXTURES


def debian_tree(**extra_files: str) -> dict[str, str]:
    """/etc/mysql as Debian 12's mariadb-server installs it, plus ``extra_files`` (path: text)."""
    root = os.path.join(FIXTURES, "mysql-etc")
    tree = {}
    for directory, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(directory, name)) as f:
                tree["/etc/mysql" + os.path.join(directory, name)[len(root):]] = f.read()
    tree.update(extra_files)
    return tree


def read(tree: dict[str, str], paths=("/etc/my.cnf", "/etc/mysql/my.cnf")) -> dict:
    def read_text(path):
        if path not in tree:
            raise FileNotFoundError(path)
        return tree[path]

    def list_directory(path):
        prefix = path.rstrip("/") + "/"
        names = [p[len(prefix):] for p in tree if p.startswith(prefix) and "/" not in p[len(prefix):]]
        if not names:
            raise FileNotFoundError(path)
        return names

    return read_server_options(paths, read_text=read_text, list_directory=list_directory)


class DebianLayoutTests(SynchronousTestCase):
    """Option files are read in the server's order through !include and !includedir, as Debian lays them out."""

    def test_stock_debian_files(self):
        options = read(debian_tree())
        self.assertEqual(options["socket"], "/run/mysqld/mysqld.sock")  # [client-server] in my.cnf
        self.assertEqual(options["pid_file"], "/run/mysqld/mysqld.pid")  # 50-server.cnf via !includedir
        self.assertEqual(options["bind_address"], "127.0.0.1")
        self.assertEqual(options["character_set_server"], "utf8mb4")
        # commented out in 50-server.cnf, and [mysqld_safe] skip_log_error is not the server's
        self.assertNotIn("datadir", options)
        self.assertNotIn("log_error", options)
        self.assertNotIn("skip_log_error", options)
        self.assertNotIn("max_allowed_packet", options)  # [mysqldump] only
        self.assertNotIn("quick", options)

    def test_a_local_file_in_includedir_with_versioned_group_and_verbosity(self):
        local = (
            "# local settings\n"
            "[mariadb-10.11]\n"
            "log-error = \"/var/log/mysql/error log.err\"  # quoted, with a space\n"
            "log_error_verbosity = 3\n"
            "[client]\n"
            "log-error = /wrong/client.err\n"
            "[mysqld]\n"
            "datadir\t= /srv/mysql/data/ # inline comment\n"
        )
        options = read(debian_tree(**{"/etc/mysql/mariadb.conf.d/90-local.cnf": local}))
        self.assertEqual(options["log_error"], "/var/log/mysql/error log.err")
        self.assertEqual(options["log_error_verbosity"], "3")
        self.assertEqual(options["datadir"], "/srv/mysql/data/")

    def test_later_files_win_and_includedir_is_sorted(self):
        tree = debian_tree(**{
            "/etc/mysql/mariadb.conf.d/99-last.cnf": "[mysqld]\nport=3310\n",
            "/etc/mysql/mariadb.conf.d/10-first.cnf": "[mysqld]\nport=3307\n",
            "/etc/mysql/mariadb.conf.d/README": "[mysqld]\nport=1\n",  # not a .cnf: ignored
        })
        self.assertEqual(read(tree)["port"], "3310")

    def test_etc_my_cnf_is_read_before_etc_mysql(self):
        tree = debian_tree(**{"/etc/my.cnf": "[mysqld]\ndatadir=/a\nport=1234\n"})
        tree["/etc/mysql/mariadb.conf.d/50-server.cnf"] += "\n[mysqld]\ndatadir=/b\n"
        options = read(tree)
        self.assertEqual((options["datadir"], options["port"]), ("/b", "1234"))

    def test_mysql_config_file_alone(self):
        tree = debian_tree(**{"/srv/my.cnf": "[mysqld]\ndatadir=/srv/data\n!include extra.cnf\n",
                              "/srv/extra.cnf": "[server]\nport = 3399\n"})
        options = read(tree, paths=("/srv/my.cnf",))
        self.assertEqual(options, {"datadir": "/srv/data", "port": "3399"})

    def test_missing_include_is_an_error_naming_both_files(self):
        tree = {"/etc/my.cnf": "[mysqld]\n!include /etc/mysql/gone.cnf\n"}
        error = self.assertRaises(OptionFileError, read, tree)
        self.assertIn("/etc/my.cnf", str(error))
        self.assertIn("/etc/mysql/gone.cnf", str(error))

    def test_include_loop_is_an_error(self):
        tree = {"/etc/my.cnf": "[mysqld]\n!include /etc/my.cnf\n"}
        self.assertIn("nested", str(self.assertRaises(OptionFileError, read, tree)))

    def test_no_files_at_all(self):
        self.assertEqual(read({}), {})


class ParserTests(SynchronousTestCase):
    """The option file syntax as the server reads it; errors name the file and line."""

    def test_syntax(self):
        text = (
            "; a comment\n"
            "  # an indented comment\n"
            "[ MySQLd ]\n"
            "loose-log-bin\n"
            "LOG_BIN_INDEX = /var/log/mysql/mysql-bin.index\n"
            "relay-log='relay#bin'  # the # inside quotes stays\n"
            "init-connect = \"SET NAMES utf8\"\n"
            "tmpdir = /tmp\\smysql\n"
            "name=value#not-a-comment\n"
            "!includedir /etc/mysql/conf.d/\n"
            "!include\t/etc/other.cnf\n"
        )
        self.assertEqual(parse_option_text(text), [
            Option("mysqld", "log_bin", None),
            Option("mysqld", "log_bin_index", "/var/log/mysql/mysql-bin.index"),
            Option("mysqld", "relay_log", "relay#bin"),
            Option("mysqld", "init_connect", "SET NAMES utf8"),
            Option("mysqld", "tmpdir", "/tmp mysql"),
            Option("mysqld", "name", "value#not-a-comment"),
            Include("/etc/mysql/conf.d/", True),
            Include("/etc/other.cnf", False),
        ])

    def test_errors_name_file_and_line(self):
        for text, problem in [
            ("datadir=/x\n", "before any [group]"),
            ("[mysqld\n", "without ']'"),
            ("[mysqld]\nsocket='/x\n", "unterminated"),
            ("[mysqld]\n!includex /x\n", "unknown directive"),
        ]:
            error = self.assertRaises(OptionFileError, parse_option_text, text, "/etc/my.cnf")
            self.assertIn(problem, str(error))
            self.assertIn("/etc/my.cnf:", str(error))

    def test_server_groups(self):
        for group in ("mysqld", "server", "mariadb", "mariadbd", "client-server", "galera",
                      "mariadb-10.11", "mysqld-8.0"):
            self.assertTrue(is_server_group(group), group)
        for group in ("client", "mysqld_safe", "mysqldump", "embedded", "client-mariadb", "mariadb-x"):
            self.assertFalse(is_server_group(group), group)

    @given(name=st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True),
           value=st.from_regex(r"[A-Za-z0-9/._:-]{1,40}", fullmatch=True),
           spaces=st.sampled_from(["", " ", "\t", "  "]))
    def test_plain_values_round_trip(self, name, value, spaces):
        assume(not name.startswith("loose_"))  # the prefix is removed
        line = f"{name.replace('_', '-')}{spaces}={spaces}{value}{spaces}"
        self.assertEqual(parse_option_text(f"[mysqld]\n{line}\n"), [Option("mysqld", name, value)])
