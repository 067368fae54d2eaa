"""A host with LVM, for tests on a kernel without device-mapper.

``FakeLvm(directory)`` keeps the state of a small LVM host in ``directory`` (the rows ``lvs``
prints, starting from the recorded fixture; a mountinfo file) and writes executables
``lvs``/``blkid``/``mount``/``umount``/``lvremove`` into ``directory/bin`` that replay the recorded
outputs, change that state as the real tools would, and append their argv (JSON, one line per
call) to ``directory/argv.log``.  Put ``bin`` first on the runner's PATH with :meth:`environ`.

:meth:`FakeLvm.run_in_process` runs the same tools in-process (plus ``du``/``df`` replaying their
fixtures): the ``tool`` of a ``tests.support.fake_runner.FakeRunner`` in unit tests that may not spawn
processes.
"""

from __future__ import annotations

import json
import os
import stat
import sys

from tests.support.fake_lvm_tools import REPO, TOOLS, fixture, run_tool


class FakeLvm:
    """The state of a small LVM host in a directory, and executables that change it as the real tools would."""

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

    def run_in_process(self, argv: list[str]) -> tuple[int, str, str]:
        """The ``tool`` of a `FakeRunner`: these tools in-process, ``du``/``df`` replaying their fixtures."""
        tool = argv[0]
        if tool == "du":
            return 0, fixture("du-sb.txt").replace("/var/lib/mysql", argv[-1]), ""
        if tool == "df":
            return 0, fixture("df-PT-B1.txt"), ""
        if tool in TOOLS:
            return run_tool(self.directory, argv)
        return 127, "", f"{tool}: not faked\n"

    def _write(self, name: str, text: str) -> None:
        with open(os.path.join(self.directory, name), "w") as f:
            f.write(text)
