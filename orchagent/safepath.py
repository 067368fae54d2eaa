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


def open_private_file(path: str, *, what: str, fixed: bool = False) -> int:
    """A read-only descriptor for a secret file (a token, a password, client credentials).

    Refused (Conflict naming ``what``, the configuration key) unless it is a regular file, not a
    symlink, owned by root or the agent's user, and neither readable nor writable by group or
    others; the checks are made on what was opened.  With ``fixed``, every directory on the way
    must be one only trusted users can change, so the path keeps naming this file when a tool
    opens it again (``--defaults-extra-file``).  Blocking (a few system calls).
    """
    def refuse(problem: str) -> Conflict:
        return Conflict(f"{what} {path!r}: {problem}")

    if fixed:
        directory, name = os.path.split(path)
        dir_fd = open_path(directory or "/", os.O_PATH | os.O_DIRECTORY, what=what, fixed=True)
    else:
        dir_fd, name = None, path
    try:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
                         dir_fd=dir_fd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise refuse(f"is a symbolic link; point {what} at the file itself") from None
            raise refuse(f"cannot open: {e.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise refuse("is not a regular file")
            if info.st_uid not in trusted_owners():
                raise refuse(f"is owned by uid {info.st_uid}; it must belong to root or to the agent's user")
            if info.st_mode & 0o077:
                raise refuse(f"has mode {stat.S_IMODE(info.st_mode):04o}; others may not read or change it "
                             f"(chmod 600)")
            if dir_fd is not None and not is_fixed(os.fstat(dir_fd), info):
                raise refuse("is in a directory that a user other than root can change; move it to one "
                             "only root can change")
        except BaseException:
            os.close(fd)
            raise
        return fd
    finally:
        if dir_fd is not None:
            os.close(dir_fd)


def real_path(fd: int) -> str:
    """The path the kernel knows for an open descriptor (where it was found, without links)."""
    return os.readlink(f"/proc/self/fd/{fd}")


def _components(path: str) -> list[str]:
    """The names of ``path`` as a stack: the first one last."""
    return [name for name in reversed(path.split("/")) if name not in ("", ".")]


def _replace(old: int, new: int) -> int:
    os.close(old)
    return new
