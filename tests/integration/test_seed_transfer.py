"""The built-in seed transfer over real loopback TCP, both sides in this process."""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import TestCase

from orchagent.seed.transfer import SeedReceiverServer, send_tree
from tests.support.seed_trees import allocated_bytes, build_tree, describe_tree

SECRET = b"correct horse battery staple"


class SeedTransferTests(TestCase):
    timeout = 60

    async def _listen(self, secret: bytes = SECRET, stall_timeout: float = 10) -> int:
        self.server = SeedReceiverServer(reactor, secret=secret, stall_timeout=stall_timeout)
        port = await self.server.listen(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))
        self.addCleanup(self.server.stopListening)
        return port.getHost().port

    def _dirs(self) -> tuple[str, str]:
        base = self.mktemp()
        source, target = os.path.join(base, "source"), os.path.join(base, "target")
        build_tree(source)
        os.makedirs(target)
        return source, target

    async def test_tree_arrives_identical(self):
        source, target = self._dirs()
        port = await self._listen()
        receiving = self.server.arm("7", target)
        sending = send_tree(reactor, "127.0.0.1", port, "7", source, secret=SECRET)
        await sending.when_done()
        await receiving.when_done()
        self.assertEqual(describe_tree(target), describe_tree(source))
        self.assertLess(allocated_bytes(os.path.join(target, "sparse.ibd")), 1024 * 1024)
        for transfer in (sending, receiving):
            self.assertEqual(transfer.state, "succeeded")
            self.assertEqual(transfer.progress.files_done, transfer.progress.files_total)
            self.assertEqual(transfer.progress.bytes_done, transfer.progress.bytes_total)
