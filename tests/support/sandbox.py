"""One MariaDB sandbox shared by every test of a TestCase class (starting a server takes seconds)."""

from __future__ import annotations

import os
import shutil
import tempfile

from testbed.mariadb import MariaDBSandbox


class SandboxPerClass:
    """Mixin: ``cls.sandbox`` in ``cls.directory``, started once for the class (then stopped again when
    ``sandbox_running`` is false: its datadir holds what a server leaves behind); removed afterwards."""

    sandbox_options: dict = {}
    sandbox_running = True

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.directory = tempfile.mkdtemp(prefix="orchagent-sandbox-")
        cls.sandbox = MariaDBSandbox(os.path.join(cls.directory, "server"), **cls.sandbox_options)
        try:
            cls.sandbox.start()
            if not cls.sandbox_running:
                cls.sandbox.stop()
        except BaseException:
            shutil.rmtree(cls.directory, ignore_errors=True)
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.sandbox.is_running():
            cls.sandbox.stop()
        shutil.rmtree(cls.directory, ignore_errors=True)
        super().tearDownClass()
