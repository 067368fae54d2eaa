"""The last lines of the MySQL error log, read backwards from the end.

V1 ran ``tail -n 20`` on whatever egrep found in /etc/my.cnf.  Here the file is read block by
block from its end until enough lines are found, so a 10 GB log costs a few blocks of memory and
time.  A line longer than the scan budget is cut (its end is kept), so memory stays bounded even
on a file with no newlines at all.  Blocking: call it in a thread.
"""

from __future__ import annotations

import os

from orchagent.errors import AgentError, NotFound

BLOCK_SIZE = 64 * 1024
#: At most this many bytes are read from the end, however few newlines they contain.
MAX_SCAN_BYTES = 4 * 1024 * 1024


def tail_lines(path: str, count: int, *, max_scan_bytes: int = MAX_SCAN_BYTES) -> list[str]:
    """The last ``count`` lines of ``path`` (without newlines); ``[]`` for an empty file."""
    try:
        with open(path, "rb") as f:
            return _tail(f, count, max_scan_bytes)
    except FileNotFoundError:
        raise NotFound(f"the MySQL error log {path} does not exist (without log_error, a server run by "
                       "systemd logs to the journal); set log_error in the server's option files or "
                       "MySQLErrorLogFile in the agent's configuration") from None
    except OSError as e:
        raise AgentError(f"cannot read the MySQL error log {path}: {e.strerror}") from None


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
