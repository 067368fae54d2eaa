import re

from setuptools import find_packages, setup

with open("orchagent/__init__.py", encoding="utf-8") as f:
    VERSION = re.search(r'^__version__ = "([^"]+)"', f.read(), re.MULTILINE).group(1)

setup(
    name="orchagent",
    version=VERSION,
    description="Host agent for MySQL/MariaDB fleets, driven by orchestrator (drop-in for orchestrator-agent)",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(exclude=["tests*", "bench*", "testbed*"]) + ["twisted.plugins"],
    install_requires=[
        "twisted>=22.4",
        "treq>=22.2",
        "pyopenssl",
        "service-identity",
        "attrs",
        "prometheus-client",
        "zstandard>=0.20",
    ],
    extras_require={"test": ["pytest", "hypothesis"]},
    entry_points={"console_scripts": ["orchagent-ctl = orchagent.ctl.cli:main"]},
)
