"""The ways the seed benchmarks copy a datadir, shared by seed_transfer and seed_network: two real
agents seeded as orchestrator seeds them, and the ``tar | socat`` pipelines DBAs build by hand.
Either runs on loopback or, given a `testbed.netns.NetworkNamespace`, inside it across its link.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

from bench.machine import cpu_seconds, peak_rss_mb, reset_peak_rss, rss_mb
from orchagent.host.hotbackup import TOOLS, backup_argv, extract_argv, tool_error
from testbed.agent import RunningAgent, free_port, start_agent
from testbed.orchestrator import HostAgent, Orchestrator
from testbed.pki import CertificateAuthority
from testbed.seeding import SOURCE_ADDRESS as SOURCE, TARGET_ADDRESS as TARGET, directory_agent_settings
from testbed.waiting import wait_for

SECRET = "bench-secret"
POLL_SECONDS = 0.1


def tls_files(directory: str) -> tuple[CertificateAuthority, dict[str, str]]:
    """A throw-away CA and a receiver certificate, as PEM files: what the TLS methods use."""
    ca = CertificateAuthority(directory)
    receiver = ca.issue("receiver")
    both = os.path.join(directory, "both.pem")
    with open(receiver.cert) as cert, open(receiver.key) as key, open(both, "w") as f:
        f.write(cert.read() + key.read())  # socat wants certificate and key in one file
    return ca, {"ca": ca.cert, "cert": receiver.cert, "key": receiver.key, "both": both}


def tar_socat(source: str, target: str, *, net=None, zstd: bool = False, tls: dict | None = None) -> dict:
    """``tar -c | [zstd -1 |] socat`` to ``socat | [zstd -d |] tar -x`` on the target's address (inside
    ``net`` when given), with socat's OpenSSL verifying the receiver by name when ``tls``; then sync."""
    run, popen = (net.run, net.popen) if net else (subprocess.run, subprocess.Popen)
    port = net.call(free_port, TARGET) if net else free_port(TARGET)
    listen, connect = f"TCP-LISTEN:{port},bind={TARGET},reuseaddr", f"TCP:{TARGET}:{port}"
    if tls:  # the same TLS checks as orchagent's: the receiver's certificate, verified by name
        listen = f"OPENSSL-LISTEN:{port},bind={TARGET},reuseaddr,cert={tls['both']},verify=0"
        connect = f"OPENSSL:{TARGET}:{port},cafile={tls['ca']},commonname=localhost"
    compress, decompress = (" | zstd -1 -T0 -q", "zstd -d -q | ") if zstd else ("", "")
    receiver = popen(["bash", "-c", f'socat -u "$1" - | {decompress}tar -x -C "$2"', "bench", listen, target])
    wait_listening(port, run)
    started = time.monotonic()
    run(["bash", "-c", f'tar -c -C "$1" .{compress} | socat -u - "$2"', "bench", source, connect], check=True)
    if receiver.wait() != 0:
        raise RuntimeError("the receiving pipeline failed")
    subprocess.run(["sync"], check=True)
    return {"seconds": time.monotonic() - started}


def wait_listening(port: int, run=subprocess.run) -> None:
    """Until something listens on TCP ``port`` (``run``: a namespace's, to look inside it)."""
    wait_for(lambda: run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout.strip(),
             timeout=10, interval=0.02, what="the receiving socat to listen")


def mariabackup_socat(defaults_file: str, datadir: str, target: str, temp_dir: str, *, net=None) -> dict:
    """The hot copy DBAs make by hand today: ``mariabackup --backup --stream=mbstream | socat`` to
    ``socat | mbstream -x`` on the target's address (inside ``net`` when given), then ``mariabackup
    --prepare`` and ``sync``.

    The same backup and extraction command lines as the agents' (``orchagent.host.hotbackup``), the
    prepare as a DBA types it (the tool's default memory); fixed argv lists joined by pipes, no
    shell.  The tools' stderr goes to a file in ``temp_dir`` (their last error line if one fails).
    Returns the seconds it took.
    """
    tool = TOOLS["mariabackup"]
    backup_dir = os.path.join(temp_dir, "backup-tmp")
    shutil.rmtree(backup_dir, ignore_errors=True)
    os.makedirs(backup_dir)
    run, popen = (net.run, net.popen) if net else (subprocess.run, subprocess.Popen)
    port = net.call(free_port, TARGET) if net else free_port(TARGET)
    processes: list[subprocess.Popen] = []

    def start(argv: list[str], **pipes) -> subprocess.Popen:
        processes.append(popen(argv, stderr=log, **pipes))
        return processes[-1]

    with open(os.path.join(temp_dir, "tools.log"), "w+b") as log:
        try:
            receiver = start(["socat", "-u", f"TCP-LISTEN:{port},bind={TARGET},reuseaddr", "-"],
                             stdout=subprocess.PIPE)
            start(extract_argv(tool, target), stdin=receiver.stdout)
            receiver.stdout.close()
            wait_listening(port, run)
            started = time.monotonic()
            backup = start(backup_argv(tool, defaults_file, backup_dir, datadir), stdout=subprocess.PIPE)
            start(["socat", "-u", "-", f"TCP:{TARGET}:{port}"], stdin=backup.stdout)
            backup.stdout.close()
            statuses = [process.wait() for process in processes]
            prepared = statuses == [0, 0, 0, 0] and start(
                [tool.name, "--prepare", f"--target-dir={target}"], stdout=log).wait() == 0
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        if not prepared:
            log.seek(0)
            raise RuntimeError(f"the hand pipeline failed (exit statuses {statuses}): "
                               f"{tool_error(log.read().decode('utf-8', 'replace'))}")
    subprocess.run(["sync"], check=True)
    shutil.rmtree(backup_dir, ignore_errors=True)
    return {"seconds": time.monotonic() - started}


class AgentPair:
    """A source agent on 127.0.0.1 whose datadir is ``source`` and a target agent on 127.0.0.2 whose
    datadir is ``target``, started once for the whole run (inside ``net`` when given; HTTPS with
    certificates of ``ca`` when given; ``extra`` settings on both, ``sides`` on one: ``{"source":
    {...}}``); :meth:`seed` is one round.  With ``mount``, each seed first mounts the source's first
    listed volume, as orchestrator does (the ``hotbackup`` backend's virtual volume), and unmounts it
    at the end."""

    def __init__(self, workdir: str, source: str, target: str, *, net=None, ca: CertificateAuthority | None = None,
                 extra: dict | None = None, sides: dict[str, dict] | None = None, mount: bool = False):
        self.workdir = workdir
        self.net = net
        self.mount = mount
        self.seed_id = 0
        self.peak_reset = True
        seed_port = net.call(free_port, TARGET) if net else free_port(TARGET)
        self.agents: list[RunningAgent] = []
        for side, address, datadir in (("source", SOURCE, source), ("target", TARGET, target)):
            agent_dir = os.path.join(workdir, address)
            os.makedirs(agent_dir)
            settings = directory_agent_settings(agent_dir, datadir, seed_port, SECRET, **(extra or {}))
            settings.update((sides or {}).get(side, {}))
            if ca is not None:
                issued = ca.issue(address, ips=(address,))
                settings.update(UseSSL=True, SSLCertFile=issued.cert, SSLPrivateKeyFile=issued.key, SSLCAFile=ca.cert)
            self.agents.append(start_agent(settings, address=address, directory=agent_dir, namespace=net))
        self.source, self.target = self.agents
        self.orchestrator = Orchestrator(ca_file=ca.cert if ca else None)
        self.started_rss_mb = {side: rss_mb(agent.process.pid) for side, agent in self.sides()}

    def sides(self):
        return (("source", self.source), ("target", self.target))

    def call(self, agent: RunningAgent, command: str):
        call = self.orchestrator.command(HostAgent.of(agent), command)
        self.orchestrator.calls.clear()  # the client records every call; keep memory flat
        if call.status != 200:
            raise RuntimeError(f"{agent.address} {command}: {call.status} {call.error or call.body[:300]!r}")
        return call.json()

    def wait_completed(self, agent: RunningAgent, seed_id: int) -> None:
        while not self.call(agent, f"seed-command-completed/{seed_id}"):
            time.sleep(POLL_SECONDS)

    def seed(self) -> dict:
        """One seed, from ``receive-mysql-seed-data`` (or ``mountlv``) until the target completed and ``sync``
        returned: its seconds (and of them ``mountlv``'s), each side's RSS when it began and peak RSS
        (VmHWM, reset when it began where permitted: :attr:`peak_reset`) and CPU seconds."""
        return self.net.call(self._seed) if self.net else self._seed()

    def _seed(self) -> dict:
        self.seed_id += 1
        seed_id = self.seed_id
        self.call(self.target, "delete-mysql-datadir")  # what orchestrator does first (the target is empty)
        pids = {side: agent.process.pid for side, agent in self.sides()}
        start_rss = {side: rss_mb(pid) for side, pid in pids.items()}  # what the agent kept from before
        for pid in pids.values():
            self.peak_reset = reset_peak_rss(pid) and self.peak_reset
        cpu_before = {side: cpu_seconds(pid) for side, pid in pids.items()}
        start = time.monotonic()
        if self.mount:
            self.call(self.source, f"mountlv?lv={self.call(self.source, 'lvs-snapshots')[0]['Path']}")
        mounted = time.monotonic() - start
        self.call(self.target, f"receive-mysql-seed-data/{seed_id}")
        self.call(self.source, f"send-mysql-seed-data/{TARGET}/{seed_id}")
        self.wait_completed(self.target, seed_id)
        subprocess.run(["sync"], check=True)
        seconds = time.monotonic() - start
        self.wait_completed(self.source, seed_id)  # its CPU is read once it is done too
        if self.mount:
            self.call(self.source, "umount")
        result = {"seconds": seconds, "mount_seconds": mounted}
        for side, agent in self.sides():
            if not self.call(agent, f"seed-command-succeeded/{seed_id}"):
                status = self.call(agent, f"seed-status/{seed_id}")
                raise RuntimeError(f"seed {seed_id} failed on the {side}: {status['Error']}")
            result[side] = {"peak_rss_mb": peak_rss_mb(pids[side]), "start_rss_mb": start_rss[side],
                            "cpu_seconds": round(cpu_seconds(pids[side]) - cpu_before[side], 2)}
        result["ratio"] = self.call(self.target, f"seed-status/{seed_id}")["CompressionRatio"]
        return result

    def stop(self) -> None:
        for agent in self.agents:
            agent.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
