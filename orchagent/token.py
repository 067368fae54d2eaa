"""The per-start access token orchestrator presents on every call (contract A.3.1)."""

import hashlib
import hmac
import os
import secrets
import stat

from orchagent import safepath
from orchagent.errors import Conflict

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class Token:
    """64 lowercase hex characters from a CSPRNG, regenerated at every start (V1 semantics)."""

    def __init__(self, value: str | None = None):
        self.value = value or hashlib.sha256(secrets.token_bytes(64)).hexdigest()

    def matches(self, candidate: str | None) -> bool:
        """Constant-time comparison; a missing candidate never matches."""
        if not candidate:
            return False
        return hmac.compare_digest(candidate.encode("utf-8", "replace"), self.value.encode("ascii"))

    def write_hint(self, path: str) -> None:
        """Write the token to ``path``, mode 0600 (V1 wrote it 0644), atomically and never through a link.

        The hint's directory may be one others can write: the file is written under a fresh
        name beside it (``O_EXCL | O_NOFOLLOW``), made durable, then renamed over the old one,
        which replaces whatever entry is there instead of writing into what it points to.  A
        planted link or other non-file at ``path`` is refused, so the agent does not start.
        """
        path = os.path.abspath(path)
        directory, name = os.path.split(path)
        dir_fd = safepath.open_path(directory, os.O_RDONLY | os.O_DIRECTORY, what="the directory of TokenHintFile")
        try:
            try:
                existing = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                existing = None
            if existing is not None and not stat.S_ISREG(existing.st_mode):
                raise Conflict(f"TokenHintFile {path} exists and is not a regular file (a symlink, directory or "
                               "the like); refusing to write the token through it: remove it, or set TokenHintFile "
                               "to a path in a directory only root can write")
            temporary = f".{name}.{secrets.token_hex(8)}"
            fd = os.open(temporary, _CREATE, 0o600, dir_fd=dir_fd)
            try:
                os.fchmod(fd, 0o600)  # exactly 0600, whatever the umask
                os.write(fd, self.value.encode("ascii") + b"\n")
                os.fsync(fd)
                os.rename(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                os.unlink(temporary, dir_fd=dir_fd)
                raise
            finally:
                os.close(fd)
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def __repr__(self) -> str:
        return "<Token (hidden)>"
