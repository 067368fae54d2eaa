"""An orchestrator-like poller and the agent it polls, shared by the poll and flood benchmarks."""

from __future__ import annotations

import gzip
import http.client
import os

from testbed.agent import RunningAgent
from testbed.orchestrator import GO_USER_AGENT

#: B.1.2, in orchestrator's order.
POLL_ROUTES = (
    "/api/available-snapshots-local",
    "/api/available-snapshots",
    "/api/lvs-snapshots",
    "/api/mount",
    "/api/mysql-status",
    "/api/mysql-port",
    "/api/mysql-du",
    "/api/mysql-datadir-available-space",
    "/api/mysql-error-log-tail",
)
NULL_ROUTES = ("/api/hostname",) * len(POLL_ROUTES)
#: What Go's http.Client sends (B.1.1).
HEADERS = {"User-Agent": GO_USER_AGENT, "Accept-Encoding": "gzip"}
TAIL_LINES = 20


class Poller:
    """One orchestrator-like client: sequential GETs on one keep-alive connection."""

    def __init__(self, agent: RunningAgent):
        self._agent = agent
        self._connection = http.client.HTTPConnection(agent.address, agent.port, timeout=60)

    def get(self, path: str) -> tuple[int, bytes]:
        target = path + "?token=" + self._agent.token
        try:
            self._connection.request("GET", target, headers=HEADERS)
            response = self._connection.getresponse()
        except (http.client.HTTPException, ConnectionError):
            self._connection.close()  # the server closed an idle connection: retry once on a new one
            self._connection.request("GET", target, headers=HEADERS)
            response = self._connection.getresponse()
        body = response.read()
        if response.getheader("content-encoding") == "gzip":
            body = gzip.decompress(body)
        return response.status, body

    def close(self) -> None:
        self._connection.close()


def agent_settings(workdir: str, agent_dir: str, datadir: str, error_log: str, variant: str) -> dict:
    """The main variant reads the datadir and port from configured commands (as V1 setups do);
    "optionfile" reads them from a my.cnf instead, so a poll runs one command instead of four."""
    snapshots, mount_point = os.path.join(agent_dir, "snapshots"), os.path.join(agent_dir, "mnt")
    os.makedirs(snapshots, exist_ok=True)
    os.makedirs(mount_point, exist_ok=True)
    settings = {
        "MySQLServiceStatusCommand": "true",
        "MySQLErrorLogFile": error_log,
        "ErrorLogTailLines": TAIL_LINES,
        "SnapshotBackend": "btrfs",
        "BtrfsSnapshotDirectory": snapshots,
        "SnapshotMountPoint": mount_point,
    }
    if variant == "commands":
        return {**settings, "MySQLDatadirCommand": f"echo {datadir}", "MySQLPortCommand": "echo 3306"}
    option_file = os.path.join(workdir, "my.cnf")
    with open(option_file, "w") as f:
        f.write(f"[mysqld]\ndatadir = {datadir}\nport = 3306\nlog_error = {error_log}\n")
    return {**settings, "MySQLConfigFile": option_file}
