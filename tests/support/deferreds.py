"""Coroutines in trial tests: ``inline`` for tests on the real reactor, `Settling` for synchronous ones."""

from __future__ import annotations

import functools

from twisted.internet.defer import Deferred


def inline(coroutine_function):
    """Let a trial test be written as ``async def`` (trial on Twisted 22.4 wants a Deferred)."""
    @functools.wraps(coroutine_function)
    def test(self):
        return Deferred.fromCoroutine(coroutine_function(self))
    return test


class Settling:
    """Mixin for a SynchronousTestCase whose coroutines must finish without the reactor."""

    def settle(self, coroutine):
        """What ``coroutine`` returned; the test fails if it is still waiting or failed."""
        return self.successResultOf(Deferred.fromCoroutine(coroutine))

    def fail_with(self, coroutine, *kinds: type[BaseException]) -> BaseException:
        """The error ``coroutine`` failed with, which must be one of ``kinds``."""
        return self.failureResultOf(Deferred.fromCoroutine(coroutine), *kinds).value
