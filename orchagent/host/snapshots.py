"""Snapshots and the snapshot mount point, whichever backend (``SnapshotBackend``) holds them.

A backend lists volumes, recognises which one a mount shows, mounts, removes and creates; this
module adds what is the same for both: the name filter, validation against the listing, the
guards (nothing mounted over an occupied mount point, no removal of a mounted snapshot), one lock
so mount/umount/remove/create never interleave, and V1's ``Mount`` answer.

The ``hotbackup`` backend's volume is no file system (:mod:`orchagent.host.hotbackup`): it keeps
what is "mounted" itself, and the mount point is not used.

``SnapshotMountPoint`` is resolved once per call, by descriptors: every directory on its way must
be one only root can change (so the path cannot be swapped before ``mount`` runs), a symlink
others could have placed is refused, and the resolved path is the one mounted on, unmounted and
looked up in mountinfo, so a second mount can never stack on the first one under another name.
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

import attrs
from twisted.internet.defer import DeferredLock

from orchagent import logs, safepath
from orchagent.config import Config
from orchagent.errors import AgentError, Conflict, NotFound
from orchagent.host.btrfs import BtrfsBackend
from orchagent.host.hotbackup import HotBackupBackend, VirtualMount
from orchagent.host.lvm import LogicalVolume, LvmBackend
from orchagent.host.mounts import MOUNTINFO, MountEntry, mount_at, read_mountinfo
from orchagent.interfaces import Clock, Disk, MySQLServer, ProcessRunner, ThreadRunner

log = logs.logger(__name__)

#: Files only a datadir has (InnoDB system tablespace, Aria control file, MySQL 8 dictionary).
DATADIR_FILES = ("ibdata1", "aria_log_control", "mysql.ibd")
#: Files of the ``mysql`` system schema directory (MariaDB/MySQL 5.x .frm, db.opt, log tables).
SYSTEM_SCHEMA_FILES = ("db.opt", "user.frm", "global_priv.frm", "general_log.CSV", "slow_log.CSV")


@attrs.frozen
class Mount:
    """V1's Mount."""

    path: str
    device: str = ""
    lv_path: str = ""
    file_system: str = ""
    is_mounted: bool = False
    disk_usage: int = 0
    mysql_data_path: str = ""
    mysql_disk_usage: int = 0
    #: The hotbackup backend's volume: the live datadir, to be copied by the backup tool, never as files.
    virtual: bool = False

    def to_json(self) -> dict:
        return {
            "Path": self.path,
            "Device": self.device,
            "LVPath": self.lv_path,
            "FileSystem": self.file_system,
            "IsMounted": self.is_mounted,
            "DiskUsage": self.disk_usage,
            "MySQLDataPath": self.mysql_data_path,
            "MySQLDiskUsage": self.mysql_disk_usage,
        }


class SnapshotBackend(Protocol):
    async def list_volumes(self) -> list[LogicalVolume]: ...

    async def volume_at(self, entry: MountEntry, volumes: list[LogicalVolume]) -> LogicalVolume | None: ...

    async def mount(self, volume: LogicalVolume, mount_point: str) -> None: ...

    async def remove(self, volume: LogicalVolume) -> None: ...

    async def create_snapshot(self, datadir: str) -> None:
        """Take a snapshot of the datadir without ``CreateSnapshotCommand``."""


@runtime_checkable
class VirtualBackend(SnapshotBackend, Protocol):
    """A backend whose volume is no file system: it keeps what is "mounted" itself."""

    async def mounted(self) -> VirtualMount | None: ...

    async def unmount(self) -> None: ...


def make_backend(config: Config, runner: ProcessRunner, clock: Clock,
                 defer_to_thread: ThreadRunner, mysql: MySQLServer) -> SnapshotBackend:
    if config.snapshot_backend == "hotbackup":
        return HotBackupBackend(config, runner, mysql, defer_to_thread)
    if config.snapshot_backend == "btrfs":
        return BtrfsBackend(runner, clock, defer_to_thread, config.btrfs_snapshot_directory,
                            config.snapshot_volumes_filter)
    return LvmBackend(runner)


def looks_like_datadir(path: str) -> bool:
    """Blocking (a few stats)."""
    if not os.path.isdir(path):
        return False
    if any(os.path.isfile(os.path.join(path, name)) for name in DATADIR_FILES):
        return True
    return any(os.path.isfile(os.path.join(path, "mysql", name)) for name in SYSTEM_SCHEMA_FILES)


def datadir_candidates(mount_point: str, datadir: str) -> list[str]:
    """``<mount>/var/lib/mysql``, ``<mount>/lib/mysql``, ``<mount>/mysql``, ``<mount>``: the datadir
    as seen from each place the snapshot's file system may have been mounted."""
    parts = [part for part in datadir.split("/") if part and part != "."]
    return [os.path.join(mount_point, *parts[start:]) for start in range(len(parts) + 1)]


def find_datadir(mount_point: str, datadir: str) -> str:
    """The datadir inside the mounted snapshot, or ``""``.  Never follows a link out of the mount.  Blocking."""
    root = os.path.realpath(mount_point)
    for candidate in datadir_candidates(mount_point, datadir):
        resolved = os.path.realpath(candidate)
        inside = resolved == root or resolved.startswith(root.rstrip("/") + "/")
        if inside and looks_like_datadir(resolved):
            return resolved
    return ""


def _resolve_mount_point(path: str) -> str:
    """Blocking (a few system calls)."""
    fd = safepath.open_path(path, os.O_PATH | os.O_DIRECTORY, what="SnapshotMountPoint", fixed=True)
    try:
        return safepath.real_path(fd)
    finally:
        os.close(fd)


class Snapshots:
    def __init__(self, config: Config, backend: SnapshotBackend, runner: ProcessRunner, disk: Disk,
                 mysql: MySQLServer, defer_to_thread: ThreadRunner,
                 mountinfo_path: str = MOUNTINFO):
        self._config = config
        self._backend = backend
        self._runner = runner
        self._disk = disk
        self._mysql = mysql
        self._defer_to_thread = defer_to_thread
        self._mountinfo_path = mountinfo_path
        self._lock = DeferredLock()
        self._virtual = backend if isinstance(backend, VirtualBackend) else None

    # --- listing ---

    async def volumes(self, name_contains: str = "") -> list[LogicalVolume]:
        return [volume for volume in await self._backend.list_volumes() if name_contains in volume.name]

    async def snapshot_volumes(self) -> list[LogicalVolume]:
        """Volumes whose name contains ``SnapshotVolumesFilter`` (all of them when it is empty, as V1)."""
        return await self.volumes(self._config.snapshot_volumes_filter)

    async def find_volumes(self, identifier: str) -> list[LogicalVolume]:
        """The volumes called ``identifier`` (name, vg/name or path); NotFound if none."""
        found = [volume for volume in await self._backend.list_volumes() if volume.known_as(identifier)]
        if not found:
            raise NotFound(f"no logical volume {identifier}: use a name or path that lvs (lvs-snapshots) lists")
        return found

    async def seed_source_hosts(self, *, local: bool) -> list[str]:
        """Hosts that can seed this one: in this data centre (``local``), or anywhere.

        The V1 command answers when it is configured; otherwise ``LocalSeedSourceHosts`` (and,
        for anywhere, ``RemoteSeedSourceHosts`` too), so orchestrator's agent page shows its
        Seed buttons without a script.
        """
        config = self._config
        if local:
            command, name = config.available_local_snapshot_hosts_command, "AvailableLocalSnapshotHostsCommand"
            hosts = config.local_seed_source_hosts
        else:
            command, name = config.available_snapshot_hosts_command, "AvailableSnapshotHostsCommand"
            hosts = config.local_seed_source_hosts + config.remote_seed_source_hosts
        if not command:
            return list(dict.fromkeys(hosts))
        result = await self._runner.run_configured(command, (), name=name, essential=True)
        return [line.strip() for line in result.text().splitlines() if line.strip()]

    # --- the mount point ---

    async def current_mount(self) -> Mount:
        """What is mounted at ``SnapshotMountPoint``, with V1's disk usage and datadir heuristics."""
        if self._virtual is not None:
            return await self._virtual_mount()
        mount_point = self._config.snapshot_mount_point
        if not mount_point:
            return Mount(path="")
        try:
            mount_point = await self._defer_to_thread(_resolve_mount_point, mount_point)
        except FileNotFoundError:
            return Mount(path=mount_point)
        entry = mount_at(read_mountinfo(self._mountinfo_path), mount_point)
        if entry is None:
            return Mount(path=mount_point)
        data_path = await self._defer_to_thread(find_datadir, entry.mount_point, await self._datadir_or_empty())
        return Mount(
            path=entry.mount_point,
            device=entry.source,
            lv_path=await self._lv_path(entry),
            file_system=entry.file_system,
            is_mounted=True,
            disk_usage=await self._usage_or_zero(entry.mount_point),
            mysql_data_path=data_path,
            mysql_disk_usage=await self._usage_or_zero(data_path) if data_path else 0,
        )

    async def mount_volume(self, identifier: str) -> Mount:
        await self._lock.acquire()
        try:
            if self._virtual is not None:
                await self._virtual.mount(await self._snapshot_volume(identifier), "")
                return await self._virtual_mount()
            mount_point = await self._resolved_mount_point()
            volume = await self._snapshot_volume(identifier)
            occupant = mount_at(read_mountinfo(self._mountinfo_path), mount_point)
            if occupant is not None:
                raise Conflict(f"{occupant.source} is already mounted at {mount_point}: unmount it first (umount)")
            await self._backend.mount(volume, mount_point)
            self._disk.invalidate()
        finally:
            self._lock.release()
        return await self.current_mount()

    async def unmount(self) -> Mount:
        """Unmount ``SnapshotMountPoint``; nothing to do (and no error) when nothing is mounted there."""
        await self._lock.acquire()
        try:
            if self._virtual is not None:
                await self._virtual.unmount()
                return await self._virtual_mount()
            mount_point = await self._resolved_mount_point()
            if mount_at(read_mountinfo(self._mountinfo_path), mount_point) is not None:
                await self._runner.run(("umount", mount_point), privileged=True, parsed=True)
                self._disk.invalidate()
                log.info("unmounted {mount_point}", mount_point=mount_point)
        finally:
            self._lock.release()
        return await self.current_mount()

    # --- changing snapshots ---

    async def remove_volume(self, identifier: str) -> None:
        await self._lock.acquire()
        try:
            volume = await self._snapshot_volume(identifier)
            for entry in read_mountinfo(self._mountinfo_path):
                if await self._backend.volume_at(entry, [volume]) is not None:
                    raise Conflict(f"{volume.path} is mounted at {entry.mount_point}: unmount it first (umount)")
            await self._backend.remove(volume)
            self._disk.invalidate()
        finally:
            self._lock.release()

    async def create_snapshot(self) -> None:
        """``CreateSnapshotCommand`` when configured (V1), else the backend's own way."""
        await self._lock.acquire()
        try:
            if self._config.create_snapshot_command:
                await self._runner.run_configured(self._config.create_snapshot_command, (),
                                                  name="CreateSnapshotCommand")
            else:
                await self._backend.create_snapshot(await self._mysql.datadir())
            self._disk.invalidate()
        finally:
            self._lock.release()

    # --- helpers ---

    async def _virtual_mount(self) -> Mount:
        """V1's Mount of the virtual volume: its path, and the live datadir with its size."""
        mounted = await self._virtual.mounted()
        if mounted is None:
            return Mount(path=self._config.snapshot_mount_point)
        usage = await self._usage_or_zero(mounted.datadir)
        return Mount(path=mounted.volume.path, device=mounted.volume.name, lv_path=mounted.volume.path,
                     file_system=mounted.tool, is_mounted=True, disk_usage=usage,
                     mysql_data_path=mounted.datadir, mysql_disk_usage=usage, virtual=True)

    async def _resolved_mount_point(self) -> str:
        """``SnapshotMountPoint`` as the kernel finds it, when nobody but root can change what it means."""
        configured = self._config.snapshot_mount_point
        if not configured.startswith("/"):
            raise AgentError("SnapshotMountPoint is not set (or not absolute) in the configuration")
        try:
            return await self._defer_to_thread(_resolve_mount_point, configured)
        except FileNotFoundError:
            raise AgentError(f"SnapshotMountPoint {configured} does not exist: create the directory") from None

    async def _snapshot_volume(self, identifier: str) -> LogicalVolume:
        volumes = await self.find_volumes(identifier)
        for volume in volumes:
            if self._config.snapshot_volumes_filter in volume.name:
                return volume
        raise Conflict(f"{identifier} is not a snapshot volume (its name does not contain "
                       f"SnapshotVolumesFilter {self._config.snapshot_volumes_filter!r}); refusing")

    async def _lv_path(self, entry: MountEntry) -> str:
        try:
            volume = await self._backend.volume_at(entry, await self._backend.list_volumes())
        except AgentError as error:
            log.warn("cannot tell which volume is mounted at {mount_point}: {error}",
                     mount_point=entry.mount_point, error=error)
            return ""
        return volume.path if volume is not None else ""

    async def _datadir_or_empty(self) -> str:
        try:
            return await self._mysql.datadir()
        except AgentError as error:
            log.warn("datadir unknown, looking for it at the snapshot's top: {error}", error=error)
            return ""

    async def _usage_or_zero(self, path: str) -> int:
        try:
            return await self._disk.usage(path)
        except AgentError as error:
            log.warn("du of {path} failed: {error}", path=path, error=error)
            return 0
