"""A host with LVM, for tests on a kernel without device-mapper.

``FakeLvm(directory)`` keeps the state of a small LVM host in ``directory`` (the rows ``lvs``
prints, starting from the recorded fixture; a mountinfo file) and writes executables
``lvs``/``blkid``/``mount``/``umount``/``lvremove`` into ``directory/bin`` that replay the recorded
outputs, change that state as the real tools would, and append their argv (JSON, one line per
call) to ``directory/argv.log``.  Put ``bin`` first on the runner's PATH with :meth:`environ`.

``FakeRunner`` runs the same tools in-process (plus ``du``/``df`` replaying their fixtures) for
unit tests that may not spawn processes; configured commands answer from a dict.
"""

from __future__ import annotations

import json
import os
import stat
import sys

from twisted.internet.defer import fail, succeed

from orchagent.process import CommandFailed, CommandResult

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(REPO, "tests", "fixtures")
TOOLS = ("lvs", "blkid", "mount", "umount", "lvremove")
LVS_OPTIONS = ["--noheading", "-o", "lv_name,vg_name,lv_path,snap_percent"]
_MOUNTINFO_ESCAPES = str.maketrans({" ": "\\040", "\t": "\\011", "\n": "\\012", "\\": "\\134"})


def fixture(name: str) -> str:
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as f:
        return f.read()


class FakeLvm:
    def __init__(self, directory: str, file_systems: dict[str, str] | None = None):
        """``file_systems``: LV path -> what blkid reports (default xfs; "" for none)."""
        self.directory = directory
        self.bin = os.path.join(directory, "bin")
        self.log_path = os.path.join(directory, "argv.log")
        self.mountinfo_path = os.path.join(directory, "mountinfo")
        os.makedirs(self.bin, exist_ok=True)
        self._write("lvs.txt", fixture("lvs-noheading.txt"))
        self._write("file-systems.json", json.dumps(file_systems or {}))
        base = [line for line in fixture("mountinfo-with-snapshot.txt").splitlines() if "snap" not in line]
        self._write("mountinfo", "\n".join(base) + "\n")
        for tool in TOOLS:
            path = os.path.join(self.bin, tool)
            with open(path, "w") as f:
                f.write(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {REPO!r})\n"
                        f"from tests.support.fake_lvm import main\n"
                        f"sys.exit(main({directory!r}, {tool!r}, sys.argv[1:]))\n")
            os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)

    def environ(self) -> dict[str, str]:
        return {**os.environ, "PATH": self.bin + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin")}

    def calls(self) -> list[list[str]]:
        """argv of every fake tool run so far, oldest first."""
        if not os.path.exists(self.log_path):
            return []
        with open(self.log_path) as f:
            return [json.loads(line) for line in f]

    def _write(self, name: str, text: str) -> None:
        with open(os.path.join(self.directory, name), "w") as f:
            f.write(text)


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
        state.append_mount(f"99 27 253:9 / {mount_point.translate(_MOUNTINFO_ESCAPES)} rw,relatime "
                           f"shared:99 - {file_system} {mapper} rw")
        return 0, "", ""
    if tool == "umount":
        if not state.remove_mount(args[-1].translate(_MOUNTINFO_ESCAPES)):
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


class FakeRunner:
    """The ProcessRunner API, in-process: fake LVM tools, fixture ``du``/``df``, canned configured commands.

    ``configured`` maps a config key to ``(exit code, stdout)``.  ``commands`` records every argv
    (and ``["configured", name, *args]``) it was asked to run.
    """

    def __init__(self, lvm: FakeLvm, configured: dict[str, tuple[int, str]] | None = None):
        self._lvm = lvm
        self.configured = configured or {}
        self.commands: list[list[str]] = []

    def run(self, argv, *, name=None, check=True, **options):
        argv = list(argv)
        self.commands.append(argv)
        tool = argv[0]
        if tool == "du":
            code, out, err = 0, fixture("du-sb.txt").replace("/var/lib/mysql", argv[-1]), ""
        elif tool == "df":
            code, out, err = 0, fixture("df-PT-B1.txt"), ""
        elif tool in TOOLS:
            code, out, err = run_tool(self._lvm.directory, argv)
        else:
            code, out, err = 127, "", f"{tool}: not faked\n"
        return self._result(name or tool, argv, code, out, err, check)

    def run_configured(self, command, args=(), *, name, check=True, **options):
        self.commands.append(["configured", name, *args])
        code, out = self.configured.get(name, (0, ""))
        return self._result(name, ["bash", "-c", command, *args], code, out, "", check)

    @staticmethod
    def _result(name, argv, code, out, err, check):
        result = CommandResult(name=name, argv=tuple(argv), exit_code=code, signal=None,
                               stdout=out.encode(), stderr=err.encode(), stdout_truncated=False,
                               timed_out=False)
        if check and code != 0:
            return fail(CommandFailed(result))
        return succeed(result)
