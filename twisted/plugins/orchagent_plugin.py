"""Makes ``twistd orchagent`` available; the real work is imported lazily from orchagent.tap."""

from twisted.application.service import ServiceMaker

orchagent = ServiceMaker(
    "orchagent",
    "orchagent.tap",
    "MySQL/MariaDB host agent for orchestrator",
    "orchagent",
)
