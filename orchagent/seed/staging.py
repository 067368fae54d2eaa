"""The receiver's staging directory, inside a datadir that the MySQL user can change meanwhile.

The datadir belongs to the MySQL user, who may rename or replace any entry in it while the root
agent receives: the staging directory's name may lead anywhere by the next lookup.  So nothing
here is looked up twice.  The datadir is opened once (``O_DIRECTORY | O_NOFOLLOW``) and its
owner noted; the staging directory ``.orchagent-seed-<id>`` is made by the agent, opened once
and checked with ``fstat`` (the agent's), and from then on everything
works from these descriptors: the tree is written below ``<staging>/tree`` through directory
descriptors, moved into the datadir with ``renameat2(RENAME_NOREPLACE)`` between the two
descriptors, and removed after a failure through the staging descriptor, whatever name the
staging directory has by then.

While receiving, the staging directory and every directory below it stay the agent's and
closed to others, so the MySQL user cannot reach anything inside, whatever owner the files in
there already have; the directories go to the datadir's owner only just before the move.
"""

from __future__ import annotations

import ctypes
import errno
import os

from orchagent import logs
from orchagent.seed.protocol import Entry, TransferFailed

log = logs.logger(__name__)

STAGING_PREFIX = ".orchagent-seed-"
PERMISSION_BITS = 0o777  # what a received entry's mode keeps: no set-uid, set-gid or sticky bit
_TREE = "tree"
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_RENAME_NOREPLACE = 1
_libc = ctypes.CDLL(None, use_errno=True)


def open_own_directory(name: str | bytes, dir_fd: int) -> int:
    """Open a directory the agent made, refusing a symlink and anything the agent does not own."""
    fd = os.open(name, _DIRECTORY, dir_fd=dir_fd)
    if os.fstat(fd).st_uid != os.geteuid():
        os.close(fd)
        raise TransferFailed(f"{os.fsdecode(name)!r} was replaced while the seed was received "
                             "(by the datadir's owner?)")
    return fd


def seal_file(fd: int, entry: Entry, owner: tuple[int, int] | None) -> None:
    """Give a received file, all its data written, its size (trailing holes are not sent), ``owner``
    (None: stay the agent's), mode and mtime."""
    if os.fstat(fd).st_size != entry.size:
        os.ftruncate(fd, entry.size)
    if owner is not None:
        os.fchown(fd, *owner)
    os.fchmod(fd, entry.mode & PERMISSION_BITS)
    os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))


class Staging:
    """The staging directory of one receive: made by :meth:`create`, then moved in or removed."""

    def __init__(self, datadir: str, seed_id: str) -> None:
        self.datadir = os.path.abspath(datadir)
        self.name = STAGING_PREFIX + seed_id
        self.owner = (-1, -1)  # the datadir's (uid, gid): what received entries are given
        self.datadir_fd = self.fd = self.tree_fd = -1
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the staging directory
        self._moved: list[tuple[str | bytes, int, int]] = []  # (name, st_dev, st_ino) moved into the datadir

    def create(self) -> None:
        """Open the datadir, remove a stale staging directory (a crash's), make a fresh one."""
        try:
            self.datadir_fd = os.open(self.datadir, _DIRECTORY)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                raise
            raise TransferFailed(f"target datadir {self.datadir!r} does not exist "
                                 "(or is not a directory)") from e
        st = os.fstat(self.datadir_fd)
        self.owner = (st.st_uid, st.st_gid)
        remove_entry(self.datadir_fd, self.name)
        self.fd = self._make()
        st = os.fstat(self.fd)
        self._identity = (st.st_dev, st.st_ino)
        os.mkdir(_TREE, 0o700, dir_fd=self.fd)
        self.tree_fd = open_own_directory(_TREE, self.fd)

    def _make(self) -> int:
        """Make the staging directory and open it, even if the datadir's owner renamed it at once.

        It cannot have left the datadir (moving a directory to another parent needs write
        access to it), and the owner cannot make directories of the agent's: the agent's
        directory that was not there before is the one just made.
        """
        before = {inode for _, inode in _listing(self.datadir_fd)}
        os.mkdir(self.name, 0o700, dir_fd=self.datadir_fd)
        for _ in range(1000):
            for name in [self.name] + [name for name, inode in _listing(self.datadir_fd) if inode not in before]:
                try:
                    fd = open_own_directory(name, self.datadir_fd)
                except (OSError, TransferFailed):
                    continue  # gone again, or not the agent's
                if os.fstat(fd).st_ino not in before:
                    return fd
                os.close(fd)
        raise TransferFailed(f"could not make the seed's staging directory in {self.datadir!r}: "
                             "it is being renamed all the time")

    def open_tree_directory(self, relative: bytes) -> int:
        """Open a directory of the staging tree step by step from the tree's descriptor."""
        fd = os.dup(self.tree_fd)
        for name in relative.split(b"/") if relative else ():
            try:
                child = open_own_directory(name, fd)
            finally:
                os.close(fd)
            fd = child
        return fd

    def tree_path(self) -> str:
        """A path to the staging tree for a child process (a hot seed's extractor): the agent's own
        descriptor's ``/proc`` link, which leads to the directory opened in :meth:`create` without
        looking up any name in the datadir, wherever its owner has moved things since."""
        return f"/proc/{os.getpid()}/fd/{self.tree_fd}"

    def move_into_datadir(self) -> None:
        """Move the tree's entries into the datadir, never replacing one, then drop the staging directory."""
        names = os.listdir(self.tree_fd)
        present = [name for name in names if _exists(name, self.datadir_fd)]
        if present:
            raise _not_empty(self.datadir, present[0])
        for name in names:
            st = os.stat(name, dir_fd=self.tree_fd, follow_symlinks=False)
            _rename_noreplace(self.tree_fd, name, self.datadir_fd, self.datadir)
            self._moved.append((name, st.st_dev, st.st_ino))
        os.fsync(self.datadir_fd)
        os.rmdir(_TREE, dir_fd=self.fd)
        self._remove_own_entry()
        os.fsync(self.datadir_fd)
        self._moved.clear()  # the datadir's now
        self.close()

    def remove(self) -> None:
        """Remove what this receive wrote: the staging directory, under whatever name it has now,
        and what was moved into the datadir already (while it is still what was moved)."""
        if self.fd >= 0:
            _best_effort(remove_contents, self.fd)
            _best_effort(self._remove_own_entry)
        for name, dev, ino in self._moved:
            if _identity(name, self.datadir_fd) == (dev, ino):
                _best_effort(remove_entry, self.datadir_fd, name)
        self._moved.clear()
        self.close()

    def close(self) -> None:
        for attribute in ("tree_fd", "fd", "datadir_fd"):
            fd = getattr(self, attribute)
            if fd >= 0:
                setattr(self, attribute, -1)
                os.close(fd)

    def _remove_own_entry(self) -> None:
        """Remove the (empty) staging directory from the datadir, found by its identity, not its name.

        The datadir's owner may keep renaming it (not out of the datadir: see :meth:`_make`), so
        it is looked up again until it is gone (no links left to the descriptor's directory).
        """
        for _ in range(1000):
            if os.fstat(self.fd).st_nlink == 0:
                return
            name = self.name if _identity(self.name, self.datadir_fd) == self._identity else self._find()
            if name is None:
                continue
            try:
                os.rmdir(name, dir_fd=self.datadir_fd)
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ENOTEMPTY):
                    raise  # else renamed, or replaced by the owner's own, in between
        raise TransferFailed(f"could not remove the seed's staging directory from {self.datadir!r}: "
                             "it is being renamed all the time")

    def _find(self) -> str | None:
        for name, inode in _listing(self.datadir_fd):
            if inode == self._identity[1] and _identity(name, self.datadir_fd) == self._identity:
                return name
        return None


class TreeDirectories:
    """A writer's way into the staging tree, for its disk thread: the directory entries go to stays
    open while they do, and new files are made in it under hidden partial names."""

    def __init__(self, staging: Staging) -> None:
        self._staging = staging
        self._open: tuple[bytes, int] | None = None  # (relative path, descriptor) last written into
        self._partial_serial = 0

    def directory(self, relative: bytes) -> int:
        """A descriptor of the staging tree's directory ``relative``, kept while entries go there.

        The sender sends a directory's entries together, so this opens each directory about once.
        """
        if self._open is not None and self._open[0] == relative:
            return self._open[1]
        fd = self._staging.open_tree_directory(relative)
        self.close()
        self._open = (relative, fd)
        return fd

    def create_partial(self, directory: int) -> tuple[bytes, int]:
        """(name, descriptor) of a new empty file, hidden, in ``directory``.

        In the file's own directory, not one for all: ext4 without a journal scans past recently
        deleted inodes near the directory's for each file it creates (``bench/RESULTS.md``).
        """
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        while True:
            self._partial_serial += 1
            name = b".orchagent-partial-%d" % self._partial_serial
            try:
                return name, os.open(name, flags, 0o600, dir_fd=directory)
            except FileExistsError:
                continue  # the tree itself has a file of that name

    def close(self) -> None:
        """Close the directory kept open (a later :meth:`directory` opens it anew)."""
        if self._open is not None:
            os.close(self._open[1])
            self._open = None


def remove_entry(dir_fd: int, name: str | bytes) -> None:
    """Remove ``name`` from ``dir_fd`` and, for a directory, everything below it, following nothing."""
    try:
        os.unlink(name, dir_fd=dir_fd)  # never follows; EISDIR for a directory (Linux)
        return
    except FileNotFoundError:
        return
    except IsADirectoryError:
        pass
    fd = os.open(name, _DIRECTORY, dir_fd=dir_fd)
    try:
        remove_contents(fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


def remove_contents(fd: int) -> None:
    for name in os.listdir(fd):
        remove_entry(fd, name)


def _best_effort(function, *args) -> None:
    """Cleanup goes on past what it cannot remove; the seed manager empties the datadir after it."""
    try:
        function(*args)
    except (OSError, TransferFailed) as e:
        log.warn("could not remove all of a failed seed's data: {error}", error=e)


def _listing(dir_fd: int) -> list[tuple[str, int]]:
    """(name, inode number) of each entry of a directory."""
    with os.scandir(dir_fd) as entries:
        return [(entry.name, entry.inode()) for entry in entries]


def _identity(name: str | bytes, dir_fd: int) -> tuple[int, int] | None:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _exists(name: str | bytes, dir_fd: int) -> bool:
    return _identity(name, dir_fd) is not None


def _not_empty(datadir: str, name: str | bytes) -> TransferFailed:
    return TransferFailed(f"target datadir {datadir!r} is not empty ({os.fsdecode(name)!r} exists); "
                          "delete the datadir before seeding")


def _rename_noreplace(src_fd: int, name: str | bytes, dst_fd: int, datadir: str) -> None:
    """``renameat2(RENAME_NOREPLACE)``: an entry planted under the same name meanwhile fails the move."""
    encoded = os.fsencode(name)
    if _libc.renameat2(src_fd, encoded, dst_fd, encoded, _RENAME_NOREPLACE) == 0:
        return
    err = ctypes.get_errno()
    if err == errno.EEXIST:
        raise _not_empty(datadir, name)
    if err != errno.EINVAL:
        raise OSError(err, os.strerror(err), name)
    # a file system without RENAME_NOREPLACE: rename never follows, it would only replace a planted entry
    if _exists(name, dst_fd):
        raise _not_empty(datadir, name)
    os.rename(name, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
