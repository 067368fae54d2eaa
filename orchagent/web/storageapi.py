"""HTTP handlers for snapshots, the mount point, disk usage and emptying the datadir (V1 routes).

Every request value is checked here before anything runs: a volume identifier must look like an
LVM name or path (and :mod:`orchagent.host.snapshots` then requires that the backend lists it), a
``du`` path must resolve inside the datadir, the snapshot mount point or ``AllowedPathRoots``.
"""

from __future__ import annotations

from typing import Sequence

from orchagent.errors import AgentError
from orchagent.host.disk import resolve_inside
from orchagent.host.snapshots import Snapshots
from orchagent.interfaces import DatadirEraser, Disk, MySQLServer
from orchagent.web import validate


class StorageAPI:
    """The storage routes, over the host objects :mod:`orchagent.graph` built.

    ``du_roots``: where ``du`` may measure besides the datadir (SnapshotMountPoint, AllowedPathRoots).
    """

    def __init__(self, *, mysql: MySQLServer, snapshots: Snapshots, disk: Disk, datadir: DatadirEraser,
                 du_roots: Sequence[str]):
        self._mysql = mysql
        self._snapshots = snapshots
        self._disk = disk
        self._datadir = datadir
        self._du_roots = tuple(du_roots)

    # --- the status poll ---

    async def available_snapshots_local(self, req):
        return await self._snapshots.seed_source_hosts(local=True)

    async def available_snapshots(self, req):
        return await self._snapshots.seed_source_hosts(local=False)

    async def lvs_snapshots(self, req):
        return [volume.to_json() for volume in await self._snapshots.snapshot_volumes()]

    async def mount(self, req):
        return (await self._snapshots.current_mount()).to_json()

    async def mysql_du(self, req):
        return await self._disk.usage(await self._mysql.datadir())

    async def mysql_datadir_available_space(self, req):
        return await self._disk.available(await self._mysql.datadir())

    # --- volumes ---

    async def lvs(self, req):
        return [volume.to_json() for volume in await self._snapshots.volumes()]

    async def lvs_matching(self, req):
        pattern = validate.volume_identifier(req.params.get("pattern"), "pattern")
        return [volume.to_json() for volume in await self._snapshots.volumes(pattern)]

    async def lv(self, req):
        identifier = validate.volume_identifier(req.arg("lv"), "lv")
        return [volume.to_json() for volume in await self._snapshots.find_volumes(identifier)]

    async def lv_by_path(self, req):
        identifier = validate.volume_identifier(req.params.get("lv"), "lv")
        return [volume.to_json() for volume in await self._snapshots.find_volumes(identifier)]

    async def mountlv(self, req):
        identifier = validate.volume_identifier(req.arg("lv"), "lv")
        return (await self._snapshots.mount_volume(identifier)).to_json()

    async def umount(self, req):
        return (await self._snapshots.unmount()).to_json()

    async def removelv(self, req):
        await self._snapshots.remove_volume(validate.volume_identifier(req.arg("lv"), "lv"))
        return True

    async def create_snapshot(self, req):
        await self._snapshots.create_snapshot()
        return True

    # --- disk usage and the datadir ---

    async def du(self, req):
        roots = list(self._du_roots)
        try:
            roots.append(await self._mysql.datadir())
        except AgentError:
            pass  # the other roots still apply
        return await self._disk.usage(resolve_inside(validate.absolute_path(req.arg("path"), "path"), roots))

    async def delete_mysql_datadir(self, req):
        await self._datadir.delete_content()
        return True

