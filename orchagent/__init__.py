"""orchagent: a host agent for MySQL and MariaDB fleets, driven by orchestrator."""
