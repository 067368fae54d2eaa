"""Request values checked at the edge: anything that fails here never reaches a lower layer.

Each validator accepts a strict grammar, so nothing it lets through can carry shell or option
syntax (a leading ``-``, whitespace, quotes, ``$``, ``;``, backquotes) into argv or environment
values; ``tests/unit/test_validate.py`` checks that property on arbitrary text.
"""

from __future__ import annotations

import ipaddress
import re

from orchagent.errors import InvalidInput
from orchagent.seed.throttle import MAX_BYTES_PER_SECOND

MAX_IDENTIFIER_LENGTH = 1024
MAX_PATH_LENGTH = 4096
MAX_LOG_NAMES = 1000  # binlog files named in one request

_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")
_DIGITS_AND_DOTS = re.compile(r"[0-9.]+")
_ZONE_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_SEED_ID = re.compile(r"[0-9]{1,18}")
_POSITION = re.compile(r"[0-9]{1,18}")
_RATE = re.compile(r"[0-9]{1,16}")
# A path segment: letters, digits and _ . + @ : , = -, never starting with "-", never "." or ".."
_SEGMENT = r"(?!\.\.?(?:/|\Z))[A-Za-z0-9_.][A-Za-z0-9_.+@:,=-]*"
_ABSOLUTE_PATH = re.compile(rf"/|(/{_SEGMENT})+/?")
_IDENTIFIER = re.compile(rf"/?{_SEGMENT}(/{_SEGMENT})*")
_FILE_NAME = re.compile(_SEGMENT)


def host(value: str | None, what: str) -> str:
    """A DNS name (RFC 1123 labels), an IPv4 address or an IPv6 address, whose zone id (after
    ``%``) may only hold letters, digits and ``_ . -`` (it may end up in argv and environment)."""
    if value:
        address, percent, zone = value.partition("%")
        try:
            parsed = ipaddress.ip_address(address)
        except ValueError:
            if not percent and _HOSTNAME.fullmatch(value) and not _DIGITS_AND_DOTS.fullmatch(value):
                return value  # "999.1.1.1" is no host
        else:
            if not percent:
                return str(parsed)
            if parsed.version == 6 and _ZONE_ID.fullmatch(zone):
                return f"{parsed}%{zone}"
    raise InvalidInput(f"{what} must be a hostname or an IP address (an IPv6 zone id may hold only letters, "
                       f"digits and _ . -), got {_shown(value)}")


def seed_id(value: str | None) -> int:
    """Orchestrator's seed ids are positive int64 numbers."""
    if value is None or not _SEED_ID.fullmatch(value) or int(value) == 0:
        raise InvalidInput(f"seed id must be a positive integer, got {_shown(value)}")
    return int(value)


def position(value: str | None, what: str) -> int:
    """A log position: absent means 0 (V1), anything but decimal digits is refused."""
    if value is None or value == "":
        return 0
    if not _POSITION.fullmatch(value):
        raise InvalidInput(f"{what} must be a non-negative integer, got {_shown(value)}")
    return int(value)


def bytes_per_second(value: str | None, what: str) -> int:
    """A rate limit: a non-negative integer (0: no limit), at most MAX_BYTES_PER_SECOND."""
    if value is None or not _RATE.fullmatch(value) or int(value) > MAX_BYTES_PER_SECOND:
        raise InvalidInput(f"{what} must be a whole number of bytes per second from 0 (no limit) to "
                           f"{MAX_BYTES_PER_SECOND}, got {_shown(value)}")
    return int(value)


def volume_identifier(value: str | None, what: str) -> str:
    """A name or path as ``lvs`` (or the btrfs backend) lists it; InvalidInput otherwise."""
    if not value:
        raise InvalidInput(f"{what} is missing: pass a logical volume name or path as lvs-snapshots lists it")
    if len(value) > MAX_IDENTIFIER_LENGTH or not _IDENTIFIER.fullmatch(value):
        raise InvalidInput(f"{what} must be a logical volume name or path as lvs-snapshots lists it: letters, "
                           f"digits and . _ + @ : , = - / (no segment starting with '-', none '.' or '..'), at most "
                           f"{MAX_IDENTIFIER_LENGTH} characters, got {_shown(value)}")
    return value


def absolute_path(value: str | None, what: str) -> str:
    """An absolute path of plain segments (no whitespace, quotes or shell characters, no ``..``)."""
    if not value:
        raise InvalidInput(f"{what} is missing: pass ?{what}=<absolute directory inside the datadir, the "
                           "snapshot mount point or AllowedPathRoots>")
    if len(value) > MAX_PATH_LENGTH or not _ABSOLUTE_PATH.fullmatch(value):
        raise InvalidInput(f"{what} must be an absolute path of letters, digits and . _ + @ : , = - "
                           f"(no segment starting with '-', none '.' or '..'), at most {MAX_PATH_LENGTH} characters, "
                           f"got {_shown(value)}")
    return value


def log_name(value: str | None) -> str:
    """A binlog or relay-log name as the server's index lists it: a bare file name or an absolute path."""
    if value and len(value) <= MAX_PATH_LENGTH and (_FILE_NAME.fullmatch(value) or _ABSOLUTE_PATH.fullmatch(value)):
        return value
    raise InvalidInput(f"invalid log file name {_shown(value)}: give a file name from the server's index "
                       "(letters, digits and . _ + @ : , = -) or its absolute path")


def log_names(values: list[str], what: str) -> list[str]:
    """Log names, one per ``?{what}=``: at least one, at most MAX_LOG_NAMES, each a :func:`log_name`."""
    if not values:
        raise InvalidInput(f"no binlog files provided: pass ?{what}=<file name>, once per file")
    if len(values) > MAX_LOG_NAMES:
        raise InvalidInput(f"too many binlog files ({len(values)}); at most {MAX_LOG_NAMES} per request")
    return [log_name(value) for value in values]


def _shown(value: str | None) -> str:
    """The bad value, quoted and shortened, safe to put in a message."""
    if value is None:
        return "nothing"
    return repr(value[:64] + ("..." if len(value) > 64 else ""))
