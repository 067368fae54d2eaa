"""orchagent: a host agent for MySQL and MariaDB fleets, driven by orchestrator."""

__version__ = "0.1.0"
