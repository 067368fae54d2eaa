"""btrfs snapshots: read-only subvolumes in ``BtrfsSnapshotDirectory``, answered in V1's LVM shapes.

A snapshot's ``Path`` is its directory, so orchestrator's ``mountlv?lv=<LogicalVolumes[0].Path>``
names it.  Mounting is a bind mount of that directory at ``SnapshotMountPoint``; the mounted
snapshot is recognised afterwards by device and inode (every subvolume has its own ``st_dev``,
and a bind mount shows the same one).  Listing reads the directory in a thread and asks the
kernel (one ioctl per entry) whether a subvolume is read-only, so no process is spawned per poll.
"""

from __future__ import annotations

import fcntl
import os
import struct
import time

from orchagent import logs
from orchagent.errors import AgentError
from orchagent.host.lvm import LogicalVolume
from orchagent.host.mounts import MountEntry
from orchagent.interfaces import Clock, ProcessRunner, ThreadRunner

log = logs.logger(__name__)

#: The inode number of every subvolume's root directory (BTRFS_FIRST_FREE_OBJECTID).
SUBVOLUME_ROOT_INODE = 256
#: _IOR(BTRFS_IOCTL_MAGIC 0x94, 25, __u64) and its read-only flag (linux/btrfs.h).
_SUBVOL_GETFLAGS = 0x80089419
_SUBVOL_RDONLY = 1 << 1
DEFAULT_SNAPSHOT_PREFIX = "mysql-snapshot-"


def is_read_only_subvolume(path: str) -> bool:
    """True for the root of a read-only btrfs subvolume.  Blocking (a few syscalls)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if os.fstat(fd).st_ino != SUBVOLUME_ROOT_INODE:
            return False
        flags = fcntl.ioctl(fd, _SUBVOL_GETFLAGS, bytes(8))
        return bool(struct.unpack("Q", flags)[0] & _SUBVOL_RDONLY)
    except OSError:
        return False  # not btrfs
    finally:
        os.close(fd)


def list_snapshots(directory: str) -> list[LogicalVolume]:
    """Every read-only subvolume directly inside ``directory``, by name.  Blocking."""
    try:
        with os.scandir(directory) as entries:
            names = sorted(entry.name for entry in entries if entry.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        raise AgentError(f"BtrfsSnapshotDirectory {directory} does not exist") from None
    snapshots = []
    for name in names:
        path = os.path.join(directory, name)
        if is_read_only_subvolume(path):
            snapshots.append(LogicalVolume(name=name, group_name=directory, path=path,
                                           is_snapshot=True, snapshot_percent=0.0))
    return snapshots


def subvolume_holding(path: str) -> str:
    """The root directory of the btrfs subvolume that contains ``path``.  Blocking."""
    current = os.path.realpath(path)
    device = os.stat(current).st_dev
    while True:
        info = os.stat(current)
        if info.st_dev != device:
            break
        if info.st_ino == SUBVOLUME_ROOT_INODE:
            return current
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    raise AgentError(f"{path} is not inside a btrfs subvolume; the btrfs snapshot backend "
                     "needs the datadir on btrfs")


def same_directory(first: str, second: str) -> bool:
    """Whether two paths show the same directory (a bind mount shows its source's inode).  Blocking."""
    try:
        a, b = os.stat(first), os.stat(second)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class BtrfsBackend:
    def __init__(self, runner: ProcessRunner, clock: Clock, defer_to_thread: ThreadRunner, snapshot_directory: str,
                 name_prefix: str):
        if not snapshot_directory.startswith("/"):
            raise AgentError("SnapshotBackend \"btrfs\" needs BtrfsSnapshotDirectory (an absolute path)")
        self._runner = runner
        self._clock = clock
        self._defer_to_thread = defer_to_thread
        self._directory = os.path.normpath(snapshot_directory)
        self._prefix = name_prefix or DEFAULT_SNAPSHOT_PREFIX

    async def list_volumes(self) -> list[LogicalVolume]:
        return await self._defer_to_thread(list_snapshots, self._directory)

    async def volume_at(self, entry: MountEntry, volumes: list[LogicalVolume]) -> LogicalVolume | None:
        if entry.file_system != "btrfs":
            return None
        for volume in volumes:
            if await self._defer_to_thread(same_directory, entry.mount_point, volume.path):
                return volume
        return None

    async def mount(self, volume: LogicalVolume, mount_point: str) -> None:
        # the subvolume is read-only, so the bind mount is too
        await self._runner.run(("mount", "--bind", volume.path, mount_point), privileged=True, parsed=True)
        log.info("mounted btrfs snapshot {volume} at {mount_point}", volume=volume.path, mount_point=mount_point)

    async def remove(self, volume: LogicalVolume) -> None:
        await self._runner.run(("btrfs", "subvolume", "delete", volume.path), privileged=True, parsed=True)
        log.info("deleted btrfs snapshot {volume}", volume=volume.path)

    async def create_snapshot(self, datadir: str) -> None:
        source = await self._defer_to_thread(subvolume_holding, datadir)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(self._clock.seconds()))
        name = f"{self._prefix}{stamp}"
        suffix = 1
        while os.path.lexists(os.path.join(self._directory, name)):
            suffix += 1
            name = f"{self._prefix}{stamp}-{suffix}"
        target = os.path.join(self._directory, name)
        await self._runner.run(("btrfs", "subvolume", "snapshot", "-r", source, target),
                               privileged=True, parsed=True)
        log.info("created btrfs snapshot {target} of {source}", target=target, source=source)
