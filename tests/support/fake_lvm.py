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

from orchagent.commands import CommandFailed, CommandResult
from tests.support.fake_lvm_tools import REPO, TOOLS, fixture, run_tool


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
                        f"from tests.support.fake_lvm_tools import main\n"
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
