"""The local attacker of the threat model: the ``mysql`` user, who owns the datadir and its logs.

    directory = mysql_directory(testcase)          # a fresh directory owned by mysql (needs root)
    as_mysql('ln -s /etc/shadow "$1"', log_path)   # a shell snippet run as mysql, arguments as $1…
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile

from tests.support.root import IS_ROOT, root_skip_reason

MYSQL_USER = "mysql"


def skip_reason() -> str | None:
    """Why attacks by the mysql user cannot run here, or None."""
    if not IS_ROOT:
        return root_skip_reason("to act as the mysql user and to run the agent as root")
    try:
        pwd.getpwnam(MYSQL_USER)
    except KeyError:
        return "needs the mysql system user (install mariadb-server)"
    if shutil.which("setpriv") is None:
        return "needs setpriv (util-linux)"
    return None


def mysql_directory(testcase, name: str = "mysql-owned") -> str:
    """``<fresh temp dir>/<name>`` owned by mysql, its parent searchable; removed at cleanup."""
    top = tempfile.mkdtemp(prefix="orchagent-test-")
    testcase.addCleanup(shutil.rmtree, top, ignore_errors=True)
    os.chmod(top, 0o755)
    directory = os.path.join(top, name)
    os.mkdir(directory, 0o750)
    user = pwd.getpwnam(MYSQL_USER)
    os.chown(directory, user.pw_uid, user.pw_gid)
    return directory


def as_mysql(script: str, *args: str) -> None:
    """Run ``sh -c script`` as the mysql user (no supplementary groups); fail if it fails."""
    subprocess.run(["setpriv", "--reuid", MYSQL_USER, "--regid", MYSQL_USER, "--clear-groups",
                    "sh", "-ec", script, "attacker", *args], check=True)
