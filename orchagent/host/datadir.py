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

import functools
import os
import re
import stat
from typing import Collection, Protocol

from orchagent import logs, safepath
from orchagent.config import Config
from orchagent.errors import AgentError, Conflict
from orchagent.host.mounts import MOUNTINFO, read_mountinfo
from orchagent.interfaces import Disk, MySQLServer, ProcessRunner, ThreadRunner

log = logs.logger(__name__)

#: FHS system directories and their well-known children (beside every top-level directory,
#: refused by rule): a wrong MySQLDatadirCommand must not empty them.  /usr/local/mysql/data and
#: /var/lib/mysql stay possible.
SYSTEM_DIRECTORIES = frozenset((
    "/usr/local", "/var/lib", "/var/tmp", "/var/local", "/var/opt", "/var/www", "/var/crash", "/var/run",
    "/var/lock", "/run/lock", "/run/user", "/run/shm", "/run/systemd", "/run/mysqld", "/dev/shm",
    "/dev/pts", "/dev/mqueue", "/dev/hugepages",
))

#: Trees no datadir lives in at any depth: configuration, kernel interfaces, programs, logs, caches.
SYSTEM_TREES = (
    "/boot", "/etc", "/proc", "/sys",
    "/usr/bin", "/usr/sbin", "/usr/lib", "/usr/lib32", "/usr/lib64", "/usr/libx32", "/usr/libexec",
    "/usr/include", "/usr/share", "/usr/src", "/usr/games",
    "/usr/local/bin", "/usr/local/sbin", "/usr/local/lib", "/usr/local/libexec", "/usr/local/include",
    "/usr/local/share", "/usr/local/src", "/usr/local/etc", "/usr/local/games", "/usr/local/man",
    "/var/log", "/var/cache", "/var/spool", "/var/mail", "/var/backups",
    "/var/lib/dpkg", "/var/lib/apt", "/var/lib/systemd", "/var/lib/private",
)

#: What shows a directory is a MySQL/MariaDB datadir: the system schema's directory (True) or a
#: system file of InnoDB (MariaDB and MySQL 5.x/8.x) or Aria (False: a regular file).
DATADIR_MARKERS = {
    "mysql": True, "#innodb_redo": True,
    "ibdata1": False, "ib_logfile0": False, "undo001": False, "undo_001": False, "mysql.ibd": False,
    "aria_log_control": False,
}

#: What an empty datadir may still hold: a partial seed's staging directory (seed/staging.py's
#: STAGING_PREFIX) and a file system's lost+found (a datadir that is a mount point).
_LEFTOVER = re.compile(r"\.orchagent-seed-[0-9]+|lost\+found")

_OPEN_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def checked_datadir(path: str, *, require_contents: bool = True) -> str:
    """The real path of ``path`` if it may be emptied or seeded into; Conflict naming the rule otherwise.

    Refused, before and after resolving links (``/bin`` is ``/usr/bin`` on a usr-merged system):
    ``/``, every top-level directory, :data:`SYSTEM_DIRECTORIES` and everything in
    :data:`SYSTEM_TREES`; with ``require_contents``, also a directory that holds anything but
    holds no datadir marker (:data:`DATADIR_MARKERS`).  Blocking: call it in a thread.
    """
    if not path or not path.startswith("/"):
        raise Conflict(_refusal(path, "absolute path", "it is not an absolute path"))
    resolved = os.path.realpath(path)
    for candidate in dict.fromkeys((resolved, os.path.normpath(path))):
        problem = system_directory_problem(candidate)
        if problem:
            raise Conflict(_refusal(path, *problem))
    if require_contents:
        _check_contents(resolved, path)
    return resolved


def system_directory_problem(path: str) -> tuple[str, str] | None:
    """(rule, explanation) when the normalized absolute ``path`` is a system directory, else None."""
    parts = [part for part in path.split("/") if part]
    if not parts:
        return "system directory", "it is (or resolves to) the system directory /"
    if len(parts) == 1:
        return "top-level directory", (f"it is (or resolves to) the top-level directory {path}; "
                                       "a datadir lives at least two levels deep (e.g. /data/mysql)")
    normal = "/" + "/".join(parts)
    if normal in SYSTEM_DIRECTORIES:
        return "system directory", f"it is (or resolves to) the system directory {normal}"
    for tree in SYSTEM_TREES:
        if normal == tree or normal.startswith(tree + "/"):
            return "system tree", f"it is (or resolves to) {normal}, inside the system tree {tree}"
    return None


def _check_contents(directory: str | int, path: str) -> None:
    """Conflict unless ``directory`` (a path, or a descriptor of ``path``) looks like a datadir or is empty."""
    problem = _contents_problem(directory, path)
    if problem:
        raise Conflict(_refusal(path, "a datadir or empty", problem))


def _contents_problem(directory: str | int, path: str) -> str | None:
    other = None
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                wanted = DATADIR_MARKERS.get(entry.name)
                if wanted is not None and (entry.is_dir(follow_symlinks=False) if wanted
                                           else entry.is_file(follow_symlinks=False)):
                    return None
                if other is None and not (_LEFTOVER.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False)):
                    other = entry.name
    except OSError as e:
        return f"{path} cannot be listed ({e.strerror})"
    if other is None:
        return None
    return (f"{path} holds {other!r} but no mysql/ schema directory and no InnoDB or Aria system "
            f"file (ibdata1, ib_logfile0, undo001, mysql.ibd, aria_log_control), and it is not empty; "
            f"if it really is the datadir, empty it by hand")


def _refusal(path: str, rule: str, problem: str) -> str:
    return (f"refusing the datadir {path!r} (rule: {rule}): {problem}; "
            f"check MySQLDatadirCommand or the datadir in the MySQL option files")


def empty_directory(path: str, mount_points: Collection[str] = (), *, require_contents: bool = True) -> list[str]:
    """Delete everything inside ``path`` but ``path`` itself; return the mount points left alone.

    ``require_contents`` as in :func:`checked_datadir`.  Blocking: call it in a thread.
    """
    checked_datadir(path, require_contents=False)
    fd = safepath.open_path(path, os.O_RDONLY | os.O_DIRECTORY, what="the datadir (MySQLDatadirCommand or datadir)")
    try:
        # what was opened counts, whatever the path means by now
        root = checked_datadir(safepath.real_path(fd), require_contents=False)
        if require_contents:
            _check_contents(fd, path)
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

    def __init__(self, config: Config, runner: ProcessRunner, mysql: MySQLServer, disk: Disk,
                 defer_to_thread: ThreadRunner, mountinfo_path: str = MOUNTINFO):
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

    async def empty(self, expected: str | None = None, *, after_failed_seed: bool = False) -> list[str]:
        """Remove the datadir's contents in a thread; the mount points left alone are returned.

        With ``expected`` (a seed's datadir), Conflict unless that is still MySQL's datadir.
        ``after_failed_seed``: a receive's partial copy need not look like a datadir (the receive
        was allowed only into one that did, or into an empty one).
        """
        datadir = await self._guarded_datadir(require_contents=not after_failed_seed)
        if expected is not None and datadir != expected:
            raise Conflict(f"the datadir is now {datadir}, not {expected}; not emptying it")
        self._ask_watchers(datadir)
        mount_points = {entry.mount_point for entry in read_mountinfo(self._mountinfo_path)}
        try:
            skipped = await self._defer_to_thread(
                functools.partial(empty_directory, datadir, mount_points, require_contents=not after_failed_seed))
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

    async def _guarded_datadir(self, require_contents: bool = True) -> str:
        await self._mysql.require_stopped("empty the datadir")
        datadir = await self._mysql.datadir()
        await self._defer_to_thread(functools.partial(checked_datadir, datadir, require_contents=require_contents))
        if not os.path.isdir(datadir):
            raise AgentError(f"the datadir {datadir} is not a directory")
        return datadir
