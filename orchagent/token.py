"""The per-start access token orchestrator presents on every call (contract A.3.1)."""

import hashlib
import hmac
import os
import secrets


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
        """Write the token to ``path`` readable by the owner only (V1 wrote it 0644)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # the file may have existed with a wider mode
            os.write(fd, self.value.encode("ascii") + b"\n")
        finally:
            os.close(fd)

    def __repr__(self) -> str:
        return "<Token (hidden)>"
