"""The seed port: it listens only while a built-in receive is armed, so nothing listens otherwise."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint

from orchagent import tls
from orchagent.config import Config
from orchagent.errors import AgentError
from orchagent.seed.receiver import SeedReceiverServer


def require_authentication(config: Config) -> None:
    """A built-in transfer needs a way for the two agents to prove themselves to each other."""
    if not (config.seed_transfer_secret or config.seed_transfer_valid_ous):
        raise AgentError("the built-in seed transfer needs SeedTransferSecret (the same on every "
                         "agent) or, with UseSSL, SeedTransferValidOUs (agents authenticated by "
                         "their certificates), or configure ReceiveSeedDataCommand/SendSeedDataCommand")


class SeedListener:
    """Starts the receiver server on ``SeedTransferPort`` when first asked, and closes it again."""

    def __init__(self, config: Config, reactor) -> None:
        self._config = config
        self._reactor = reactor
        self._server: SeedReceiverServer | None = None

    async def server(self) -> SeedReceiverServer:
        """The listening receiver server (started now if it is not yet)."""
        if self._server is None:
            config = self._config
            require_authentication(config)
            server = SeedReceiverServer(
                self._reactor, secret=config.seed_transfer_secret.encode(),
                tls=tls.seed_server_options(config) if config.use_ssl else None,
                stall_timeout=config.seed_stall_timeout_seconds, sender_ous=config.seed_transfer_valid_ous,
                max_connections=config.seed_transfer_max_connections,
                handshake_timeout=config.seed_handshake_timeout_seconds)
            address = config.http_bind_address
            endpoint_class = TCP6ServerEndpoint if ":" in address else TCP4ServerEndpoint
            try:
                await server.listen(endpoint_class(self._reactor, config.seed_transfer_port, interface=address))
            except Exception as e:
                raise AgentError(f"cannot listen for the seed on port {config.seed_transfer_port} "
                                 f"(SeedTransferPort): {e}") from None
            self._server = server
        return self._server

    def close(self) -> Deferred:
        """Stop listening; fires once the port is closed."""
        server, self._server = self._server, None
        return server.stopListening() if server is not None else succeed(None)
