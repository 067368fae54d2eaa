"""Handlers for the agent's identity, health and whitelisted custom commands."""

from __future__ import annotations

from orchagent import __version__
from orchagent.errors import NotFound
from orchagent.interfaces import ProcessRunner
from orchagent.registrar import Registrar
from orchagent.web.metrics import CONTENT_TYPE, Metrics
from orchagent.web.rendering import ok_envelope
from orchagent.web.resource import Response


class CoreAPI:
    def __init__(self, *, hostname: str, registrar: Registrar, runner: ProcessRunner,
                 custom_commands: dict[str, str], metrics: Metrics | None = None):
        self._hostname = hostname
        self._registrar = registrar
        self._runner = runner
        self._custom_commands = custom_commands
        self._metrics = metrics

    async def hostname(self, req) -> str:
        """The name this agent registers with orchestrator (V1: the kernel hostname)."""
        return self._hostname

    async def version(self, req) -> str:
        """orchagent's version, so an operator can compare hosts."""
        return __version__

    async def status(self, req):
        """V1's health check: ``"OK"``, or 500 ``"BAD"`` when orchestrator has not answered lately."""
        return "OK" if self._registrar.healthy() else Response("BAD", 500)

    async def metrics(self, req) -> Response:
        """Prometheus' text format; no token, like the status endpoint."""
        return Response(await self._metrics.render(), content_type=CONTENT_TYPE.encode("ascii"))

    async def custom_command(self, req) -> dict:
        name = req.params["cmd"]
        command = self._custom_commands.get(name)
        if command is None:
            known = ", ".join(sorted(self._custom_commands)) or "none are configured"
            raise NotFound(f"{name}: no such custom command (CustomCommands has: {known})")
        result = await self._runner.run_configured(command, name=f"CustomCommands[{name}]")
        return ok_envelope(result.text())
