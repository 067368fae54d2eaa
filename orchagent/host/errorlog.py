"""The last lines of the MySQL error log, read backwards from the end.

V1 ran ``tail -n 20`` on whatever egrep found in /etc/my.cnf.  Here the file is read block by
block from its end until enough lines are found, so a 10 GB log costs a few blocks of memory and
time.  A line longer than the scan budget is cut (its end is kept), so memory stays bounded even
on a file with no newlines at all.  Blocking: call it in a thread.

The log usually sits in a directory the ``mysql`` user can write, and the agent reads it as root
for the API: a log replaced by a symlink to ``/etc/shadow``, a fifo (a read that never ends) or a
device must not be read.  So the path is walked by descriptors (:mod:`orchagent.safepath`), the
log is opened without side effects (``O_PATH``), checked with ``fstat`` (a regular file of the
MySQL user, root or the agent, with one link) and only then reopened for reading.
"""

from __future__ import annotations

import os
import pwd
import stat

from orchagent import safepath
from orchagent.errors import AgentError, Conflict, NotFound

BLOCK_SIZE = 64 * 1024
#: At most this many bytes are read from the end, however few newlines they contain.
MAX_SCAN_BYTES = 4 * 1024 * 1024
MYSQL_USER = "mysql"


def tail_lines(path: str, count: int, *, max_scan_bytes: int = MAX_SCAN_BYTES) -> list[str]:
    """The last ``count`` lines of ``path`` (without newlines); ``[]`` for an empty file."""
    try:
        with _open_log(path) as f:
            return _tail(f, count, max_scan_bytes)
    except FileNotFoundError:
        raise NotFound(f"the MySQL error log {path} does not exist (without log_error, a server run by "
                       "systemd logs to the journal); set log_error in the server's option files or "
                       "MySQLErrorLogFile in the agent's configuration") from None
    except OSError as e:
        raise AgentError(f"cannot read the MySQL error log {path}: {e.strerror}") from None


def _open_log(path: str):
    """The log opened for reading, once it is known to be a plain file nobody else could have planted."""
    located = safepath.open_path(path, os.O_PATH, what="the MySQL error log (MySQLErrorLogFile or log_error)")
    try:
        _check_log(path, os.fstat(located))
        fd = os.open(f"/proc/self/fd/{located}", os.O_RDONLY | os.O_CLOEXEC)  # this very file, not the path
    finally:
        os.close(located)
    return os.fdopen(fd, "rb")


def _check_log(path: str, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise Conflict(f"the MySQL error log {path} is not a regular file ({_kind(info.st_mode)}); refusing to "
                       "read it: set MySQLErrorLogFile to the file the server writes")
    if info.st_uid not in safepath.trusted_owners() | _mysql_uid():
        raise Conflict(f"the MySQL error log {path} belongs to uid {info.st_uid}, neither the {MYSQL_USER} "
                       "user nor root; refusing to read it: set MySQLErrorLogFile to the file the server writes")
    if info.st_nlink != 1:
        raise Conflict(f"the MySQL error log {path} has {info.st_nlink} hard links (it may be another file "
                       "linked in); refusing to read it")


def _mysql_uid() -> frozenset[int]:
    try:
        return frozenset((pwd.getpwnam(MYSQL_USER).pw_uid,))
    except KeyError:
        return frozenset()


def _kind(mode: int) -> str:
    kinds = {stat.S_IFLNK: "a symlink", stat.S_IFDIR: "a directory", stat.S_IFIFO: "a fifo",
             stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}
    return kinds.get(stat.S_IFMT(mode), "not a file")


def _tail(f, count: int, max_scan_bytes: int) -> list[str]:
    end = f.seek(0, os.SEEK_END)
    if count <= 0 or end == 0:
        return []
    blocks: list[bytes] = []
    newlines = 0
    position = end
    # count + 1 newlines: the last line's own terminator, plus one before the first wanted line.
    while position > 0 and newlines <= count and end - position < max_scan_bytes:
        size = min(BLOCK_SIZE, position, max_scan_bytes - (end - position))
        position -= size
        f.seek(position)
        block = f.read(size)
        blocks.append(block)
        newlines += block.count(b"\n")
    data = b"".join(reversed(blocks))
    del blocks
    lines = data.split(b"\n")
    del data
    if not lines[-1]:
        lines.pop()  # the file's final newline
    return [line.decode("utf-8", "replace").rstrip("\r") for line in lines[-count:]]
