"""LVM snapshots, the V1 backend: ``lvs``, ``blkid``, ``mount`` and ``lvremove`` as argv lists.

The parsers are pure functions over the tools' text (fixtures in ``tests/fixtures``).  Every tool
runs with ``LC_ALL=C`` (``parsed=True``: a comma decimal separator would turn every snapshot into a
non-snapshot) and with sudo when ``ExecWithSudo`` is set (``privileged=True``).
"""

from __future__ import annotations

import re
import struct

import attrs

from orchagent import logs
from orchagent.errors import AgentError, Conflict
from orchagent.host.mounts import MountEntry
from orchagent.interfaces import ProcessRunner

log = logs.logger(__name__)

LVS_ARGV = ("lvs", "--noheading", "-o", "lv_name,vg_name,lv_path,snap_percent")

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_BLKID_TYPE = re.compile(r'(?:^|\s)TYPE="([^"]*)"')


@attrs.frozen
class LogicalVolume:
    """V1's LogicalVolume, for either backend.  ``aliases`` are the other names a caller may use."""

    name: str
    group_name: str
    path: str
    is_snapshot: bool
    snapshot_percent: float
    aliases: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {
            "Name": self.name,
            "GroupName": self.group_name,
            "Path": self.path,
            "IsSnapshot": self.is_snapshot,
            "SnapshotPercent": self.snapshot_percent,
        }

    def known_as(self, identifier: str) -> bool:
        return identifier in (self.name, self.path) or identifier in self.aliases


def float32(value: float) -> float:
    """``value`` rounded to float32 and widened again, as V1's ``ParseFloat(s, 32)`` (3.27 → 3.2699999809265137)."""
    return struct.unpack("f", struct.pack("f", value))[0]


def mapper_path(group_name: str, name: str) -> str:
    """The device-mapper name mountinfo shows for an LV (dashes doubled, joined by one dash)."""
    return "/dev/mapper/{}-{}".format(group_name.replace("-", "--"), name.replace("-", "--"))


def parse_lvs(text: str) -> list[LogicalVolume]:
    """Rows of ``lvs --noheading -o lv_name,vg_name,lv_path,snap_percent``.

    Columns are whitespace-separated; lv_path is blank for LVs without a device (thin pools) and
    snap_percent is blank for non-snapshots, so a row has two to four tokens.  Rows that fit no
    shape are skipped instead of crashing (V1 panicked).
    """
    volumes = []
    for line in text.strip("\n").splitlines():
        tokens = line.split()
        if len(tokens) < 2 or len(tokens) > 4:
            continue
        name, group = tokens[0], tokens[1]
        rest = tokens[2:]
        path = rest.pop(0) if rest and rest[0].startswith("/") else ""
        percent = rest.pop(0) if rest else ""
        if rest or (percent and not _NUMBER.fullmatch(percent)):
            continue
        is_snapshot = bool(percent)
        volumes.append(LogicalVolume(
            name=name,
            group_name=group,
            path=path,
            is_snapshot=is_snapshot,
            snapshot_percent=float32(float(percent)) if is_snapshot else 0.0,
            aliases=(f"{group}/{name}", mapper_path(group, name)),
        ))
    return volumes


def parse_blkid_type(text: str) -> str | None:
    """The ``TYPE="…"`` of blkid's first line; ``SEC_TYPE=`` and ``PTTYPE=`` are not it."""
    lines = text.splitlines()
    match = _BLKID_TYPE.search(lines[0]) if lines else None
    return match.group(1) if match and match.group(1) else None


class LvmBackend:
    """Snapshots are logical volumes; a mounted one is recognised by its device-mapper name."""

    def __init__(self, runner: ProcessRunner):
        self._runner = runner

    async def list_volumes(self) -> list[LogicalVolume]:
        result = await self._runner.run(LVS_ARGV, privileged=True, essential=True, parsed=True)
        return parse_lvs(result.text())

    async def volume_at(self, entry: MountEntry, volumes: list[LogicalVolume]) -> LogicalVolume | None:
        for volume in volumes:
            if volume.known_as(entry.source):
                return volume
        return None

    async def mount(self, volume: LogicalVolume, mount_point: str) -> None:
        result = await self._runner.run(("blkid", volume.path), privileged=True, parsed=True, check=False)
        file_system = parse_blkid_type(result.text()) if result.ok else None
        if file_system is None:
            raise Conflict(f"cannot mount {volume.path}: blkid finds no file system on it")
        # xfs refuses a second file system with the UUID of one already mounted: the origin
        options = ("-o", "nouuid") if file_system == "xfs" else ()
        await self._runner.run(("mount", *options, volume.path, mount_point), privileged=True)
        log.info("mounted {volume} ({file_system}) at {mount_point}", volume=volume.path,
                 file_system=file_system, mount_point=mount_point)

    async def remove(self, volume: LogicalVolume) -> None:
        await self._runner.run(("lvremove", "--force", volume.path), privileged=True, parsed=True)
        log.info("removed logical volume {volume}", volume=volume.path)

    async def create_snapshot(self, datadir: str) -> None:
        raise AgentError("the lvm snapshot backend needs CreateSnapshotCommand (for example an "
                         "lvcreate --snapshot command) in the configuration")
