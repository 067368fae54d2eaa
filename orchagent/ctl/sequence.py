"""orchestrator's ``executeSeed`` (contract B.2.2, B.2.3) as a sequence of steps, without any I/O.

:meth:`SeedSequence.steps` is a generator.  It yields what orchestrator does next (a status
poll, a command, a yes/no question, a pause, a state row) and is sent the answer; the seed fails
with :class:`SeedFailed` carrying orchestrator's own message.  Whoever runs it does the calls:
orchagent-ctl over treq, the test suite's orchestrator stand-in with Go's decoding rules.  So
the order of calls, the checks between them and the copy loop's rules live in one place::

    sequence = SeedSequence(seed_id, target, source)     # target/source: anything with .hostname
    steps = sequence.steps()
    effect = next(steps)
    while True:
        effect = steps.send(perform(effect))             # StopIteration: "Done"
"""

from __future__ import annotations

from typing import Any, Generator, Protocol

import attrs

#: The copy fails when more rounds than this saw no progress (hard-coded in orchestrator).
STALE_ROUNDS_LIMIT = 10
BAILING_OUT = "10 iterations have passed without progress. Bailing out."

#: Command kinds: what a failed call means to orchestrator.
STEP = "step"  # a transport error fails the seed
BACKGROUND = "background"  # receive/send: orchestrator ignores the answer
CLEANUP = "cleanup"  # abort/umount after a failure: answers ignored


class Host(Protocol):
    hostname: str


@attrs.frozen
class Poll:
    """``GetAgent(agent)``: the 9 status GETs (B.1.2); send back an object with the Agent fields
    the sequence reads (``MySQLRunning``, ``LogicalVolumes``, ``MountPoint``, ``MySQLDiskUsage``,
    ``MySQLDatadirDiskFree``)."""

    agent: Any


@attrs.frozen
class Command:
    """``executeAgentCommand``: GET ``path`` (plus ``query``) on ``agent``; the answer is not read."""

    agent: Any
    path: str
    query: tuple[tuple[str, str], ...] = ()
    kind: str = STEP


@attrs.frozen
class Ask:
    """A yes/no question (``seed-command-completed/<id>``...); send back a bool."""

    agent: Any
    path: str


@attrs.frozen
class Sleep:
    """A pause; ``copy_loop``: the copy loop's wait, which only delays noticing the end."""

    seconds: float
    copy_loop: bool = False


@attrs.frozen
class State:
    """A row of ``agent_seed_state``; a failure's message goes to the latest ``tracked`` row."""

    action: str
    tracked: bool = True


class SeedFailed(Exception):
    """executeSeed returned this error: the seed ends failed."""


class SeedSequence:
    """One run of executeSeed; ``copied``, ``source_bytes`` and ``mounted`` say how far it got."""

    def __init__(self, seed_id: int, target: Host, source: Host, *, wait_before_send: float = 2,
                 poll_seconds: float = 30):
        """``wait_before_send`` is orchestrator's SeedWaitSecondsBeforeSend; ``poll_seconds`` the
        copy loop's pause (30 s in orchestrator)."""
        self.seed_id = seed_id
        self.target = target
        self.source = source
        self.wait_before_send = wait_before_send
        self.poll_seconds = poll_seconds
        self.copied: list[int] = []  # the target's mysql-du at each copy round
        self.source_bytes = 0  # the mounted snapshot's MySQLDiskUsage
        self.mounted = False  # the sequence mounted a snapshot on the source and has not unmounted it
        self.started = False  # the target was asked to receive

    def steps(self) -> Generator[Any, Any, None]:
        t, s, seed_id = self.target.hostname, self.source.hostname, self.seed_id
        target, source = self.target, self.source

        yield State(f"getting target agent info for {t}")
        target_agent = yield Poll(target)
        yield State(f"getting source agent info for {s}")
        source_agent = yield Poll(source)
        yield State(f"Checking MySQL status on target {t}")
        if target_agent.MySQLRunning:
            raise SeedFailed("MySQL is running on target host. Cowardly refusing to proceeed. "
                             "Please stop the MySQL service")
        yield State(f"Looking up available snapshots on source {s}")
        if not source_agent.LogicalVolumes:
            raise SeedFailed("No logical volumes found on source host")
        yield State(f"Checking mount point on source {s}")
        if source_agent.MountPoint["IsMounted"]:
            raise SeedFailed("Volume already mounted on source host; please unmount")
        volume = source_agent.LogicalVolumes[0]  # always the first one (B.2.2 step 6)
        yield State(f"{s} Mounting logical volume: {volume['Path']}")
        yield Command(source, "mountlv", (("lv", volume["Path"]),))
        self.mounted = True
        source_agent = yield Poll(source)
        self.source_bytes = needed = source_agent.MountPoint["MySQLDiskUsage"]
        yield State(f"MySQL data volume on source host {s} is {needed} bytes", tracked=False)

        yield State(f"Erasing MySQL data on {t}")
        yield Command(target, "delete-mysql-datadir")
        yield State(f"Aquiring target host datadir free space on {t}")
        target_agent = yield Poll(target)
        if needed > target_agent.MySQLDatadirDiskFree:
            yield from self._unmount(CLEANUP)
            raise SeedFailed(f"Not enough disk space on target host {t}. Required: {needed}, available: "
                             f"{target_agent.MySQLDatadirDiskFree}. Bailing out.")

        yield State(f"{t} will now receive data in background", tracked=False)
        self.started = True
        yield Command(target, f"receive-mysql-seed-data/{seed_id}", kind=BACKGROUND)
        yield State(f"Waiting {self.wait_before_send:g} seconds for {t} to start listening for incoming data",
                    tracked=False)
        yield Sleep(self.wait_before_send)
        yield State(f"{s} will now send data to {t} in background")
        yield Command(source, f"send-mysql-seed-data/{t}/{seed_id}", kind=BACKGROUND)

        complete, stale, copied = False, 0, 0
        while not complete:
            du = (yield Poll(target)).MySQLDiskUsage
            if du == copied:
                stale += 1  # never reset (B.2.3)
            copied = du
            self.copied.append(copied)
            failed = False
            if (yield Ask(target, f"seed-command-completed/{seed_id}")):
                complete = True
                if not (yield Ask(target, f"seed-command-succeeded/{seed_id}")):
                    failed = True
            if stale > STALE_ROUNDS_LIMIT:
                failed = True
            if failed:
                yield Command(source, f"abort-seed/{seed_id}", kind=CLEANUP)
                yield Command(target, f"abort-seed/{seed_id}", kind=CLEANUP)
                yield from self._unmount(CLEANUP)
                raise SeedFailed(BAILING_OUT)
            percent = 100 * copied // needed if needed > 0 else 0
            yield State(f"Copied {copied}/{needed} bytes ({percent}%)")
            if not complete:
                yield Sleep(self.poll_seconds, copy_loop=True)

        yield State(f"Executing post-copy command on {t}")
        yield Command(target, "post-copy/", (("sourceHost", s),))
        yield State(f"{s} Unmounting logical volume: {volume['Path']}")
        yield from self._unmount(STEP)
        yield State(f"Starting MySQL on target: {t}")
        yield Command(target, "mysql-start")
        yield State(f"Submitting MySQL instance for discovery: {t}", tracked=False)
        yield State("Done", tracked=False)

    def _unmount(self, kind: str):
        yield Command(self.source, "umount", kind=kind)
        self.mounted = False
