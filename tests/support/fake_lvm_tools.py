"""The fake LVM tools themselves (stdlib only, so each fake executable starts fast).

See :mod:`tests.support.fake_lvm` for how tests use them.
"""

from __future__ import annotations

import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(REPO, "tests", "fixtures")
TOOLS = ("lvs", "blkid", "mount", "umount", "lvremove")
LVS_OPTIONS = ["--noheading", "-o", "lv_name,vg_name,lv_path,snap_percent"]
MOUNTINFO_ESCAPES = str.maketrans({" ": "\\040", "\t": "\\011", "\n": "\\012", "\\": "\\134"})


def fixture(name: str) -> str:
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as f:
        return f.read()


def main(directory: str, tool: str, args: list[str]) -> int:
    """Entry point of the fake executables."""
    code, out, err = run_tool(directory, [tool, *args])
    sys.stdout.write(out)
    sys.stderr.write(err)
    return code


def run_tool(directory: str, argv: list[str]) -> tuple[int, str, str]:
    """Log ``argv`` and do what the real tool would to the state in ``directory``."""
    with open(os.path.join(directory, "argv.log"), "a") as f:
        f.write(json.dumps(argv) + "\n")
    tool, args = os.path.basename(argv[0]), argv[1:]
    state = _State(directory)
    if tool == "lvs":
        if args[:3] != LVS_OPTIONS:
            return 3, "", f"  Unrecognised lvs arguments {args}\n"
        rows = state.rows()
        if args[3:]:
            rows = [row for row in rows if row.split()[0] in args[3:] or row.split()[2] in args[3:]]
            if not rows:
                return 5, "", fixture("lvs-unknown-lv.stderr")
        return 0, "".join(row + "\n" for row in rows), ""
    if tool == "blkid":
        row = state.row(args[-1])
        file_system = state.file_systems().get(args[-1], "xfs") if row else ""
        if not file_system:
            return 2, "", ""
        return 0, fixture(f"blkid-{file_system}.txt").replace("/dev/vg_data/mysql-snap-20200410-0300", args[-1]), ""
    if tool == "mount":
        device, mount_point = args[-2], args[-1]
        row = state.row(device)
        if row is None:
            return 32, "", f"mount: {mount_point}: special device {device} does not exist.\n"
        name, group = row.split()[:2]
        mapper = "/dev/mapper/{}-{}".format(group.replace("-", "--"), name.replace("-", "--"))
        file_system = state.file_systems().get(device, "xfs")
        state.append_mount(f"99 27 253:9 / {mount_point.translate(MOUNTINFO_ESCAPES)} rw,relatime "
                           f"shared:99 - {file_system} {mapper} rw")
        return 0, "", ""
    if tool == "umount":
        if not state.remove_mount(args[-1].translate(MOUNTINFO_ESCAPES)):
            return 32, "", f"umount: {args[-1]}: not mounted.\n"
        return 0, "", ""
    if tool == "lvremove":
        row = state.row(args[-1])
        if args[:1] != ["--force"] or row is None:
            return 5, "", fixture("lvs-unknown-lv.stderr")
        state.set_rows([r for r in state.rows() if r != row])
        return 0, "", f'  Logical volume "{row.split()[0]}" successfully removed\n'
    return 127, "", f"{tool}: not faked\n"


class _State:
    def __init__(self, directory: str):
        self._directory = directory

    def _path(self, name: str) -> str:
        return os.path.join(self._directory, name)

    def rows(self) -> list[str]:
        with open(self._path("lvs.txt")) as f:
            return [line.rstrip("\n") for line in f if line.strip()]

    def row(self, device: str) -> str | None:
        for row in self.rows():
            if row.split()[2] == device:
                return row
        return None

    def set_rows(self, rows: list[str]) -> None:
        with open(self._path("lvs.txt"), "w") as f:
            f.write("".join(row + "\n" for row in rows))

    def file_systems(self) -> dict[str, str]:
        with open(self._path("file-systems.json")) as f:
            return json.load(f)

    def append_mount(self, line: str) -> None:
        with open(self._path("mountinfo"), "a") as f:
            f.write(line + "\n")

    def remove_mount(self, escaped_mount_point: str) -> bool:
        with open(self._path("mountinfo")) as f:
            lines = f.read().splitlines()
        for index in reversed(range(len(lines))):
            if lines[index].split(" ")[4] == escaped_mount_point:
                del lines[index]
                with open(self._path("mountinfo"), "w") as f:
                    f.write("".join(line + "\n" for line in lines))
                return True
        return False
