"""One switch for orchagent's log level (``--debug``), independent of how twistd logs."""

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    Logger,
    globalLogPublisher,
)

_levels = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_observer = FilteringLogObserver(globalLogPublisher, [_levels])


def logger(namespace: str) -> Logger:
    """A Logger whose debug events only pass when ``--debug`` was given."""
    return Logger(namespace=namespace, observer=_observer)


def set_debug(enabled: bool) -> None:
    _levels.setLogLevelForNamespace("orchagent", LogLevel.debug if enabled else LogLevel.info)
