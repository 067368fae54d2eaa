"""Opening a path that passes through directories someone else (the ``mysql`` user) can write.

The kernel resolves a path anew at every call, so whatever was checked about a path says nothing
about the next open of it.  Here a path is walked one component at a time from ``/`` with
directory descriptors and ``O_NOFOLLOW``; a symlink is followed only where nobody but root (or
the agent's own user) could have put it, and the caller checks what was opened with ``fstat``.
Blocking (a few system calls per component): call it in a thread from the reactor.
"""

from __future__ import annotations

import errno
import os
import stat

from orchagent.errors import Conflict

_DIRECTORY = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_LINKS = 40  # the kernel's own limit (ELOOP)


def trusted_owners() -> frozenset[int]:
    """Users whose files the agent trusts: root and the agent's own user."""
    return frozenset((0, os.geteuid()))


def is_fixed(directory: os.stat_result, entry: os.stat_result) -> bool:
    """Whether only a trusted user can rename, remove or replace ``entry`` inside ``directory``."""
    if directory.st_uid not in trusted_owners():
        return False
    if not directory.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return True
    # Others may create names here; the sticky bit keeps them from replacing a trusted owner's.
    return bool(directory.st_mode & stat.S_ISVTX) and entry.st_uid in trusted_owners()


def open_path(path: str, flags: int, *, what: str, fixed: bool = False, mode: int = 0o600) -> int:
    """A descriptor for ``path`` opened with ``flags | O_NOFOLLOW``; the caller closes it.

    A symlink on the way (the last component included) is followed only if it is owned by a
    trusted user in a directory where only trusted users can replace it; otherwise Conflict,
    naming ``what`` (say which configuration key holds the path).  With ``fixed``, every component
    must be such that nobody else can replace it, so the path keeps meaning what it means now.
    FileNotFoundError and other OS errors pass through.
    """
    if not path.startswith("/"):
        raise Conflict(f"{what} {path!r} is not an absolute path")
    pending = _components(path)
    fd = os.open("/", _DIRECTORY)
    links = 0
    try:
        while pending:
            name = pending.pop()
            last = not pending
            try:
                entry = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                if not (last and flags & os.O_CREAT):
                    raise
                entry = None
            if entry is not None and name != "..":
                here = os.fstat(fd)
                if stat.S_ISLNK(entry.st_mode):
                    if entry.st_uid not in trusted_owners() or not is_fixed(here, entry):
                        raise Conflict(f"{what} {path!r}: {name!r} is a symlink that a user other than "
                                       f"root could have put there; refusing to follow it (configure "
                                       f"the real path, made of directories only root can change)")
                    links += 1
                    if links > _MAX_LINKS:
                        raise Conflict(f"{what} {path!r}: too many levels of symbolic links")
                    target = os.readlink(name, dir_fd=fd)
                    pending.extend(_components(target))
                    if target.startswith("/"):
                        fd = _replace(fd, os.open("/", _DIRECTORY))
                    continue
                if fixed and not is_fixed(here, entry):
                    raise Conflict(f"{what} {path!r}: {name!r} is in a directory that a user other than "
                                   f"root can change; configure a path made of directories only root can change")
            try:
                opened = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC if last else _DIRECTORY,
                                 mode, dir_fd=fd)
            except OSError as e:
                if e.errno != errno.ELOOP:
                    raise
                raise Conflict(f"{what} {path!r}: {name!r} became a symlink while it was being opened; "
                               f"refusing to follow it") from None
            fd = _replace(fd, opened)
        if not _components(path):
            fd = _replace(fd, os.open("/", flags | os.O_CLOEXEC))
        result, fd = fd, -1
        return result
    finally:
        if fd >= 0:
            os.close(fd)


def real_path(fd: int) -> str:
    """The path the kernel knows for an open descriptor (where it was found, without links)."""
    return os.readlink(f"/proc/self/fd/{fd}")


def _components(path: str) -> list[str]:
    """The names of ``path`` as a stack: the first one last."""
    return [name for name in reversed(path.split("/")) if name not in ("", ".")]


def _replace(old: int, new: int) -> int:
    os.close(old)
    return new
