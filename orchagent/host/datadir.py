"""Emptying the MySQL datadir before a seed, without ever deleting more than its contents.

V1 ran ``MySQLDeleteDatadirContentCommand`` after checking only that the datadir was not ``/``.
Here the built-in way removes the contents in a thread, file descriptor relative (a symlink is
unlinked, never followed, even if it is swapped in during the walk), and stops at every mount
boundary: a directory on another device, or listed as a mount point, is left as it is.  The
datadir itself is opened once, walking its path by descriptors (a symlink the mysql user could
have planted on the way is refused, see :mod:`orchagent.safepath`), and the directory emptied is
the one opened, checked again by the path the kernel gives for it.
"""

from __future__ import annotations

import os
import stat
from typing import Callable, Collection, Protocol

from orchagent import logs, safepath
from orchagent.errors import AgentError, Conflict
from orchagent.host.mounts import MOUNTINFO, read_mountinfo

log = logs.logger(__name__)

#: Directories no datadir can be: a wrong MySQLDatadirCommand must not empty them.
SYSTEM_DIRECTORIES = frozenset((
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/media", "/mnt", "/opt",
    "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var", "/var/lib", "/var/tmp",
))

_OPEN_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def checked_datadir(path: str) -> str:
    """The real path of ``path`` if emptying it is plausible; Conflict otherwise."""
    if not path or not path.startswith("/"):
        raise Conflict(f"refusing to empty the datadir {path!r}: it is not an absolute path")
    resolved = os.path.realpath(path)
    if resolved in SYSTEM_DIRECTORIES:
        raise Conflict(f"refusing to empty {path!r}: it is (or resolves to) the system directory "
                       f"{resolved}; check MySQLDatadirCommand / the datadir setting")
    return resolved


def empty_directory(path: str, mount_points: Collection[str] = ()) -> list[str]:
    """Delete everything inside ``path`` but ``path`` itself; return the mount points left alone.

    Blocking: call it in a thread.
    """
    checked_datadir(path)
    fd = safepath.open_path(path, os.O_RDONLY | os.O_DIRECTORY, what="the datadir (MySQLDatadirCommand or datadir)")
    try:
        root = checked_datadir(safepath.real_path(fd))  # what was opened, whatever the path means by now
        skipped: list[str] = []
        _empty(fd, root, os.fstat(fd).st_dev, frozenset(mount_points), skipped)
        return skipped
    finally:
        os.close(fd)


def _empty(dir_fd: int, where: str, device: int, mount_points: frozenset[str], skipped: list[str]) -> bool:
    """Empty the open directory ``dir_fd``; True when everything in it was removed."""
    with os.scandir(dir_fd) as entries:
        names = [entry.name for entry in entries]
    emptied = True
    for name in names:
        path = os.path.join(where, name)
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if not stat.S_ISDIR(info.st_mode):
                os.unlink(name, dir_fd=dir_fd)
                continue
            if info.st_dev != device or path in mount_points:
                skipped.append(path)
                emptied = False
                continue
            child = os.open(name, _OPEN_DIRECTORY, dir_fd=dir_fd)
            try:
                if os.fstat(child).st_dev != device:  # replaced by a mount since the stat
                    skipped.append(path)
                    emptied = False
                    continue
                child_emptied = _empty(child, path, device, mount_points, skipped)
            finally:
                os.close(child)
            if child_emptied:
                os.rmdir(name, dir_fd=dir_fd)
            else:
                emptied = False
        except FileNotFoundError:
            continue  # gone already
    return emptied


class DatadirWatcher(Protocol):
    """Who must know before and after the datadir is emptied (the seeds: their data is in it)."""

    def refuse_emptying(self, datadir: str) -> None:
        """Raise Conflict to keep the datadir as it is."""

    async def emptied(self, datadir: str) -> None: ...


class DatadirEraser:
    """Empties the datadir for ``delete-mysql-datadir`` and for a seed that must start over."""

    def __init__(self, config, runner, mysql, disk, defer_to_thread: Callable, mountinfo_path: str = MOUNTINFO):
        self._command = config.mysql_delete_datadir_content_command
        self._runner = runner
        self._mysql = mysql
        self._disk = disk
        self._defer_to_thread = defer_to_thread
        self._mountinfo_path = mountinfo_path
        self._watchers: list[DatadirWatcher] = []

    def watch(self, watcher: DatadirWatcher) -> None:
        self._watchers.append(watcher)

    async def delete_content(self) -> None:
        """``MySQLDeleteDatadirContentCommand`` when configured (V1: no arguments), else :meth:`empty`."""
        if not self._command:
            await self.empty()
            return
        datadir = await self._guarded_datadir()
        self._ask_watchers(datadir)
        try:
            await self._runner.run_configured(self._command, (), name="MySQLDeleteDatadirContentCommand")
        finally:
            self._disk.invalidate()
        await self._tell_watchers(datadir)
        log.info("emptied the datadir {datadir} with MySQLDeleteDatadirContentCommand", datadir=datadir)

    async def empty(self, expected: str | None = None) -> list[str]:
        """Remove the datadir's contents in a thread; the mount points left alone are returned.

        With ``expected`` (a seed's datadir), Conflict unless that is still MySQL's datadir.
        """
        datadir = await self._guarded_datadir()
        if expected is not None and datadir != expected:
            raise Conflict(f"the datadir is now {datadir}, not {expected}; not emptying it")
        self._ask_watchers(datadir)
        mount_points = {entry.mount_point for entry in read_mountinfo(self._mountinfo_path)}
        try:
            skipped = await self._defer_to_thread(empty_directory, datadir, mount_points)
        finally:
            self._disk.invalidate()
        await self._tell_watchers(datadir)
        if skipped:
            log.warn("emptied the datadir {datadir} except mount points inside it: {skipped}",
                     datadir=datadir, skipped=", ".join(skipped))
        else:
            log.info("emptied the datadir {datadir}", datadir=datadir)
        return skipped

    def _ask_watchers(self, datadir: str) -> None:
        for watcher in self._watchers:
            watcher.refuse_emptying(datadir)

    async def _tell_watchers(self, datadir: str) -> None:
        for watcher in self._watchers:
            await watcher.emptied(datadir)

    async def _guarded_datadir(self) -> str:
        await self._mysql.require_stopped("empty the datadir")
        datadir = await self._mysql.datadir()
        checked_datadir(datadir)
        if not os.path.isdir(datadir):
            raise AgentError(f"the datadir {datadir} is not a directory")
        return datadir
