"""Request values checked at the edge: anything that fails here never reaches a lower layer."""

from __future__ import annotations

import ipaddress
import re

from orchagent.errors import InvalidInput

_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")
_DIGITS_AND_DOTS = re.compile(r"[0-9.]+")
_SEED_ID = re.compile(r"[0-9]{1,18}")


def host(value: str | None, what: str) -> str:
    """A DNS hostname or an IP address literal, nothing else (it may end up in argv)."""
    if value:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            if _HOSTNAME.fullmatch(value) and not _DIGITS_AND_DOTS.fullmatch(value):  # "999.1.1.1" is no host
                return value
    raise InvalidInput(f"{what} must be a hostname or an IP address, got {_shown(value)}")


def seed_id(value: str | None) -> int:
    """Orchestrator's seed ids are positive int64 numbers."""
    if value is None or not _SEED_ID.fullmatch(value) or int(value) == 0:
        raise InvalidInput(f"seed id must be a positive integer, got {_shown(value)}")
    return int(value)


def _shown(value: str | None) -> str:
    """The bad value, quoted and shortened, safe to put in a message."""
    if value is None:
        return "nothing"
    return repr(value[:64] + ("..." if len(value) > 64 else ""))
