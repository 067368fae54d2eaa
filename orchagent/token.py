"""The access token orchestrator presents on every call (contract A.3.1): per start, or fixed (``TokenFile``)."""

import hashlib
import hmac
import os
import re
import secrets
import stat

from orchagent.config import ConfigError

#: What a fixed token may be: URL-path safe (it is part of submit-agent's path) and long enough.
_FIXED_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,128}")
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


def read_token_file(path: str) -> Token:
    """The fixed token of ``TokenFile``, from a file only root (or the agent's user) can read.

    The file is checked after opening (:func:`orchagent.safepath.open_private_file`), so what is
    checked is what is read.  Messages never quote the token.
    """
    try:
        fd = safepath.open_private_file(path, what="TokenFile")
    except Conflict as e:
        raise ConfigError(str(e)) from None
    try:
        content = os.read(fd, 1024)
    finally:
        os.close(fd)
    value = content.decode("ascii", "replace").strip()
    if not _FIXED_TOKEN.fullmatch(value):
        raise ConfigError(f"TokenFile {path!r}: must hold one token of 16 to 128 characters from A-Z, a-z, 0-9, "
                          "'-' and '_' (e.g. the output of: python3 -c 'import secrets; "
                          "print(secrets.token_urlsafe(32))')")
    return Token(value)
