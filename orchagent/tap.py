"""``twistd orchagent``: command-line options and the service maker."""

import sys

from twisted.python import usage

from orchagent import __version__, allocator, logs, tls
from orchagent.config import DEFAULT_CONFIG_FILES, ConfigError, load_config
from orchagent.token import read_token_file

log = logs.logger(__name__)


class Options(usage.Options):
    synopsis = "[--config FILE] [--debug] [--version]"
    longdesc = (
        "Run the orchagent host agent: an HTTP(S) JSON API for orchestrator on every MySQL/MariaDB "
        "host. Without --config, these files are read in order, later ones overriding earlier "
        "keys (orchestrator-agent's lookup): " + ", ".join(DEFAULT_CONFIG_FILES) + "."
    )
    optParameters = [
        ["config", "c", None, "Read only this JSON configuration file."],
    ]
    optFlags = [
        ["debug", "d", "Log debug messages too (every request and every command run)."],
    ]

    def opt_version(self) -> None:
        """Print orchagent's version and exit."""
        sys.stdout.write(f"orchagent {__version__}\n")
        raise SystemExit(0)

    def postOptions(self) -> None:
        paths = None if self["config"] is None else [self["config"]]
        try:
            self["settings"] = load_config(paths, warn=lambda message: log.warn("{message}", message=message))
            tls.check(self["settings"])
            token_file = self["settings"].token_file
            self["token"] = read_token_file(token_file) if token_file else None
        except ConfigError as e:
            # Not a UsageError: twistd would print its usage text first (and exit 0 on Twisted
            # 22.4).  SystemExit prints the problems, one line each, and exits 1.
            raise SystemExit(str(e)) from None


def makeService(options: Options, reactor=None):
    if reactor is None:
        from twisted.internet import reactor
    from orchagent.service import make_service

    allocator.tune_for_large_buffers()
    logs.set_debug(options["debug"])
    return make_service(options["settings"], reactor, token=options.get("token"))
