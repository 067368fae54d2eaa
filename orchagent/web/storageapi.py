"""HTTP handlers for snapshots, the mount point, disk usage and emptying the datadir (V1 routes).

Every request value is checked here before anything runs: a volume identifier must look like an
LVM name or path (and :mod:`orchagent.host.snapshots` then requires that the backend lists it), a
``du`` path must resolve inside the datadir, the snapshot mount point or ``AllowedPathRoots``.
"""

from __future__ import annotations

from orchagent.errors import AgentError
from orchagent.host.datadir import DatadirEraser
from orchagent.host.disk import DiskUsage, resolve_inside
from orchagent.host.mounts import MOUNTINFO
from orchagent.host.snapshots import Snapshots, make_backend
from orchagent.threads import thread_runner
from orchagent.web import validate


class StorageAPI:
    """The storage routes.  ``snapshots``, ``disk`` and ``datadir`` are public for the seed layer."""

    def __init__(self, config, mysql, snapshots: Snapshots, disk: DiskUsage, datadir: DatadirEraser):
        self._config = config
        self._mysql = mysql
        self.snapshots = snapshots
        self.disk = disk
        self.datadir = datadir

    # --- the status poll ---

    async def available_snapshots_local(self, req):
        return await self.snapshots.seed_source_hosts(local=True)

    async def available_snapshots(self, req):
        return await self.snapshots.seed_source_hosts(local=False)

    async def lvs_snapshots(self, req):
        return [volume.to_json() for volume in await self.snapshots.snapshot_volumes()]

    async def mount(self, req):
        return (await self.snapshots.current_mount()).to_json()

    async def mysql_du(self, req):
        return await self.disk.usage(await self._mysql.datadir())

    async def mysql_datadir_available_space(self, req):
        return await self.disk.available(await self._mysql.datadir())

    # --- volumes ---

    async def lvs(self, req):
        return [volume.to_json() for volume in await self.snapshots.volumes()]

    async def lvs_matching(self, req):
        pattern = validate.volume_identifier(req.params.get("pattern"), "pattern")
        return [volume.to_json() for volume in await self.snapshots.volumes(pattern)]

    async def lv(self, req):
        identifier = validate.volume_identifier(req.arg("lv"), "lv")
        return [volume.to_json() for volume in await self.snapshots.find_volumes(identifier)]

    async def lv_by_path(self, req):
        identifier = validate.volume_identifier(req.params.get("lv"), "lv")
        return [volume.to_json() for volume in await self.snapshots.find_volumes(identifier)]

    async def mountlv(self, req):
        identifier = validate.volume_identifier(req.arg("lv"), "lv")
        return (await self.snapshots.mount_volume(identifier)).to_json()

    async def umount(self, req):
        return (await self.snapshots.unmount()).to_json()

    async def removelv(self, req):
        await self.snapshots.remove_volume(validate.volume_identifier(req.arg("lv"), "lv"))
        return True

    async def create_snapshot(self, req):
        await self.snapshots.create_snapshot()
        return True

    # --- disk usage and the datadir ---

    async def du(self, req):
        roots = [self._config.snapshot_mount_point, *self._config.allowed_path_roots]
        try:
            roots.append(await self._mysql.datadir())
        except AgentError:
            pass  # the other roots still apply
        return await self.disk.usage(resolve_inside(validate.absolute_path(req.arg("path"), "path"), roots))

    async def delete_mysql_datadir(self, req):
        await self.datadir.delete_content()
        return True


def make_storage(config, runner, reactor, mysql, *, mountinfo_path: str = MOUNTINFO,
                 defer_to_thread=None) -> StorageAPI:
    """The storage layer for ``config.snapshot_backend``, wired to the one runner and ``mysql``.

    ``defer_to_thread(function, *args)`` runs blocking file work; by default in the reactor's pool.
    """
    defer_to_thread = defer_to_thread or thread_runner(reactor)

    disk = DiskUsage(runner, reactor)
    backend = make_backend(config, runner, reactor, defer_to_thread, mysql)
    snapshots = Snapshots(config, backend, runner, disk, mysql, defer_to_thread, mountinfo_path)
    datadir = DatadirEraser(config, runner, mysql, disk, defer_to_thread, mountinfo_path)
    return StorageAPI(config, mysql, snapshots, disk, datadir)
