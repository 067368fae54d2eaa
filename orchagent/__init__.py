"""orchagent: a host agent for MySQL and MariaDB fleets, driven by orchestrator."""

__version__ = "0.1.0"  # the one source: setup.py reads it, debian/changelog must match
