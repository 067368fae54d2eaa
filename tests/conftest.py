"""Run the suite from a throw-away directory, so nothing a test writes lands in the checkout.

trial's ``TestCase.mktemp()`` makes its directories relative to the working directory
(``tests.unit.test_config/...``), and hypothesis keeps its database there.  The move happens
in ``pytest_configure``, before collection, since hypothesis settles its directory on import.
"""

import os
import shutil
import tempfile

_directories = {}


def pytest_configure(config):
    _directories["checkout"] = os.getcwd()
    _directories["scratch"] = tempfile.mkdtemp(prefix="orchagent-tests-")
    os.chdir(_directories["scratch"])


def pytest_unconfigure(config):
    os.chdir(_directories["checkout"])
    shutil.rmtree(_directories["scratch"], ignore_errors=True)  # the path made above, never the cwd
