"""What is mounted where, from ``/proc/self/mountinfo``.

V1 grepped ``/etc/mtab`` for the mount point as a substring (so ``/tmp`` matched
``/tmp/foo``) and split on whitespace (so paths with spaces broke).  mountinfo gives every field
unambiguously: the kernel escapes space, tab, newline and backslash in paths as ``\\ooo``, and the
mount point is compared exactly.
"""

from __future__ import annotations

import os
import re

import attrs

MOUNTINFO = "/proc/self/mountinfo"

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@attrs.frozen
class MountEntry:
    """One line of mountinfo (proc(5)); paths are decoded."""

    mount_id: int
    parent_id: int
    device_number: str  # "major:minor"
    root: str  # the directory of the file system that is mounted (a btrfs subvolume path, a bind source)
    mount_point: str
    options: str
    file_system: str
    source: str  # the device, e.g. /dev/mapper/vg_data-mysql--snap
    super_options: str


def decode_path(field: str) -> str:
    """Undo the kernel's ``\\ooo`` escapes (``\\040`` is a space)."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Every well-formed line, in file order (later entries are mounted on top of earlier ones)."""
    entries = []
    for line in text.split("\n"):  # only \n: other line breaks may be part of a path
        fields = line.split(" ")
        try:
            separator = fields.index("-", 6)
            entries.append(MountEntry(
                mount_id=int(fields[0]),
                parent_id=int(fields[1]),
                device_number=fields[2],
                root=decode_path(fields[3]),
                mount_point=decode_path(fields[4]),
                options=fields[5],
                file_system=fields[separator + 1],
                source=decode_path(fields[separator + 2]),
                super_options=fields[separator + 3] if len(fields) > separator + 3 else "",
            ))
        except (ValueError, IndexError):
            continue  # not a mountinfo line; the kernel never writes one, so skip rather than fail
    return entries


def mount_at(entries: list[MountEntry], path: str) -> MountEntry | None:
    """The visible mount whose mount point is exactly ``path`` (the last one: it is on top)."""
    wanted = os.path.normpath(path) if path else ""
    found = None
    for entry in entries:
        if entry.mount_point == wanted:
            found = entry
    return found


def read_mountinfo(path: str = MOUNTINFO) -> list[MountEntry]:
    """The current mount table.  A small in-kernel file: reading it does not block."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return parse_mountinfo(f.read())
