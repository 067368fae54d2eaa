"""What the owner of a seed transfer sees of it: its :class:`Progress` while it runs, and its one
:class:`Outcome` once it ended.

Both one lane's :class:`~orchagent.seed.transfer.Transfer` and a seed's lanes taken together
(:mod:`orchagent.seed.lanes`) report in these terms, so they live apart from either.
"""

from __future__ import annotations

import attrs
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from orchagent.seed.protocol import TransferFailed


@attrs.define
class Progress:
    """How far a transfer is.  Byte counts are logical file bytes (holes included).

    Updated by one thread per transfer (the receiver's disk thread, its decoding thread for the
    wire counts; the sender's sending thread); plain int stores, so the reactor may read them at
    any time.  ``started``/``finished`` are reactor times.
    """

    bytes_done: int = 0
    files_done: int = 0
    bytes_total: int | None = None  # None until the sender's quick walk is done
    files_total: int | None = None
    wire_bytes: int = 0  # the data stream's bytes on the wire
    data_bytes: int = 0  # what they carry uncompressed (data_bytes / wire_bytes: the compression ratio)
    resumes: int = 0  # connections that took over after a dropped one
    resent_bytes: int = 0  # file bytes sent (sender) or received (receiver) again after drops
    started: float | None = None  # when the peer was authenticated
    finished: float | None = None


class TransferAborted(TransferFailed):
    """The transfer was aborted on request."""


class Outcome:
    """Something that ends once, in ``error`` (None: success): ``when_done()`` Deferreds for it."""

    error: TransferFailed | None
    _waiters: list[Deferred]

    @property
    def done(self) -> bool:
        raise NotImplementedError

    def when_done(self) -> Deferred:
        """A new Deferred each call: None on success, else the error."""
        d = Deferred()
        if self.done:
            self._fire_one(d)
        else:
            self._waiters.append(d)
        return d

    def _fire_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            self._fire_one(d)

    def _fire_one(self, d: Deferred) -> None:
        if self.error is None:
            d.callback(None)
        else:
            d.errback(Failure(self.error))
