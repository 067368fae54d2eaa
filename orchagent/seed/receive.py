"""One armed receive of the built-in seed transfer (one lane of it): the worker that writes the
stream to the target disk, and the wait for a sender whose connection dropped or stalled.

:mod:`orchagent.seed.receiver` (the seed port) authenticates each sender and attaches its
connection here; what outlives a connection (the writer, its staging and verified progress) lives
here too, so a resumed connection continues where the last one verified
(:mod:`orchagent.seed.resumption`).
"""

from __future__ import annotations

import socket
from typing import Any, Callable

from orchagent import logs
from orchagent.seed import authentication
from orchagent.seed.channel import SocketChannel, Stalled
from orchagent.seed.hotseed import Extractor
from orchagent.seed.lanes import SharedStaging
from orchagent.seed.protocol import TransferFailed
from orchagent.seed.resumption import START, resume_frame
from orchagent.seed.transfer import Connection, Dropped, Transfer
from orchagent.seed.writer import TreeWriter

log = logs.logger(__name__)


class ReceiveTransfer(Transfer):
    """One armed receive: its writer (staging, verified progress) outlives connections, one at a time.

    When a connection drops before END, or carries nothing for the silence limit (the worker's
    :class:`Stalled`), its worker undoes what was not verified (:meth:`TreeWriter.rewind`) and the
    receive waits for the sender to reconnect until ``stall_timeout`` seconds after the drop (for a
    stall: after the link last carried data the receiver verified, so connections that authenticate
    and then stall too cannot keep it waiting for ever), then fails (its staging directory removed)
    if none did.
    """

    def __init__(self, reactor: Any, seed_id: str, datadir: str, stall_timeout: float,
                 extractor: Extractor | None, shared: SharedStaging) -> None:
        super().__init__(reactor, seed_id, "receive", stall_timeout)
        self.datadir = datadir
        self._extractor = extractor
        self._shared = shared
        self._writer: TreeWriter | None = None  # from the first connection on
        self._sender_due = reactor.callLater(stall_timeout, self._no_sender)
        self._early: list[bytes] | None = None  # stream bytes read before the worker took the connection
        self._dropping = False  # the connection dropped; its worker or connection is still winding up
        # reactor time the link last carried data, while its connections stall (None: the last one did not)
        self._quiet_since: float | None = None
        self._resumed_at = START  # where the connection began: one that verified nothing more did not move

    def _no_sender(self) -> None:
        """Armed (or dropped) for ``stall_timeout`` and nobody authenticated: give up, saying what was refused."""
        refused = f"; last {self.last_refusal}" if self.last_refusal else ""
        seconds = self._stall_timeout
        if self._writer is None:
            what = f"no sender authenticated for seed {self.seed_id} within {seconds:g} s"
        elif self._quiet_since is not None:
            what = (f"seed {self.seed_id} stalled: the sender did not send data for {seconds:g} seconds "
                    f"(SeedStallTimeoutSeconds): the connection carried nothing for {self._silence:g} s and was "
                    "dropped, and no sender resumed the seed")
        else:
            what = (f"seed {self.seed_id}: the connection ended before the sender finished the tree, "
                    f"and it did not reconnect within {seconds:g} s")
        self.conclude(TransferFailed(f"{what}{refused}"))

    def conclude(self, error: TransferFailed | None) -> None:
        if self._sender_due.active():
            self._sender_due.cancel()
        if self.state == "reconnecting" and not self._concluded:
            self._start_worker(self._writer.discard)  # no connection's worker is left to do it
        if error is not None:
            self._shared.cancel()  # other lanes waiting to finish give up
        super().conclude(error)

    @property
    def connected(self) -> bool:
        """A sender is attached (or its dropped connection is still being wound up)."""
        return self._connection is not None

    def attach(self, connection: Connection, early: bytes, session: authentication.Session) -> None:
        """The sender is authenticated: tell it where to begin, start the connection's worker;
        ``early`` is data that came with AUTH."""
        if self._sender_due.active():
            self._sender_due.cancel()
        self.connection_opened(connection)
        mac = session.stream_mac()
        first = self._writer is None
        if first:
            self._begin()
            self._writer = TreeWriter(self.datadir, self.seed_id, self.progress, mac=mac, extractor=self._extractor,
                                      shared=self._shared)
            point = START
        else:
            self.state = "running"
            self.progress.resumes += 1
            point = self._writer.reconnected(mac)
            log.info("seed {seed_id}: the sender reconnected; resuming after {files} files and {nbytes} bytes "
                     "verified", seed_id=self.seed_id, files=point.files, nbytes=point.nbytes)
        self._resumed_at = point
        connection.transport.write(resume_frame(session, point))
        writer = self._writer
        self._early = [early]

        def start(channel: SocketChannel) -> None:
            connection.setTimeout(None)  # the worker notices a stall itself
            early, self._early = b"".join(self._early), None
            self._start_worker(self._write, writer, early, lambda: channel.receive(writer.free_buffer()), first)

        connection.pause_reading()  # the worker reads the socket from now on
        self._open_channel(connection, socket.SHUT_RD, f"seed {self.seed_id} stalled: the sender did not send "
                           f"data for {self._silence:g} seconds", start)

    def received(self, data: bytes) -> None:
        """From the reactor: stream bytes that came before the worker took the connection (with
        the AUTH frame, under TLS in the same read); later ones, after the stream's end, nobody reads."""
        if self._early is not None:
            self._early.append(data)

    def connection_closed(self) -> None:
        super().connection_closed()
        if not self._concluded:
            self._dropping = True  # over before the end: its worker rewinds
            self._await_sender()

    def _write(self, writer: TreeWriter, early: bytes, source: Callable[[], Any], first: bool) -> Any:
        """Worker thread (one per connection): everything that touches the target disk.

        ``source`` gives the next piece of the stream (None at its end): views of the writer's
        reused buffers, which it takes back once written.  A stream cut short is rewound to its
        last verified point, for the next connection to continue.
        """
        try:
            if first:
                writer.start()
            writer.feed(early)
            while not writer.ended:
                chunk = self._next(writer, source)
                if isinstance(chunk, Dropped):
                    return chunk
                if chunk is None:
                    break
                writer.feed(chunk)
            if not writer.ended and not self._concluded:
                return Dropped(writer.rewind())
            self._reactor.callFromThread(self._finishing)  # the worker is done with the connection
            writer.finish(lambda: self._concluded)
        except BaseException:
            writer.discard()
            raise

    def _next(self, writer: TreeWriter, source: Callable[[], Any]) -> Any:
        """Worker: the next piece of the stream (None at its end), or :class:`Dropped` once the
        connection carried nothing for the silence limit."""
        waited = 0.0
        while True:
            try:
                return source()
            except Stalled:
                if self._concluded:
                    raise
                if writer.source_port is None:
                    return Dropped(writer.rewind(), silent=self._silence)
                waited += self._silence  # a hot seed cannot resume: it has the whole stall timer
                if waited >= self._stall_timeout:
                    raise TransferFailed(f"seed {self.seed_id} stalled: the sender did not send data for "
                                         f"{self._stall_timeout:g} seconds; a hot seed's backup stream cannot be "
                                         "sent again: start the seed anew") from None

    def _worker_dropped(self, dropped: Dropped) -> None:
        self.progress.resent_bytes += dropped.resent_bytes
        if not dropped.silent:
            self._quiet_since = None  # it closed: the sender has the whole stall timer to reconnect
        elif self._writer.verified.point != self._resumed_at or self._quiet_since is None:
            self._quiet_since = self._reactor.seconds() - dropped.silent
        # else it verified nothing since the last stall either: the seed fails when that one's time is up
        how = f"carried nothing for {dropped.silent:g} s" if dropped.silent else "dropped"
        log.warn("seed {seed_id}: the connection from the sender {how}; {nbytes} unverified bytes thrown away, "
                 "waiting up to {seconds:.3g} s for it to reconnect", seed_id=self.seed_id, how=how,
                 nbytes=dropped.resent_bytes, seconds=self._reconnect_due() - self._reactor.seconds())
        if self._concluded:  # aborted meanwhile: nothing else removes what was received
            self._start_worker(self._writer.discard)
            return
        self._dropping = True
        if self._connection_open:
            self._connection.abort()  # the reactor did not read it: it may not know yet
        self._await_sender()

    def _await_sender(self) -> None:
        """Once the dropped connection and its worker are both gone, wait for the next sender."""
        if self._workers or self._connection_open or not self._dropping or self._concluded:
            return
        self._dropping = False
        self._connection = None
        self.state = "reconnecting"
        self._sender_due = self._reactor.callLater(max(self._reconnect_due() - self._reactor.seconds(), 0),
                                                   self._no_sender)

    def _reconnect_due(self) -> float:
        """When a dropped connection's sender must have resumed the seed: ``stall_timeout`` after the
        drop, or after the link last carried data if it stalled (and the connections since moved nothing)."""
        since = self._reactor.seconds() if self._quiet_since is None else self._quiet_since
        return since + self._stall_timeout

    def _finishing(self) -> None:
        if not self._concluded:
            self.state = "finishing"
            self._release_channel()
            self._connection.setTimeout(None)  # no data is due any more; keepalives go on
            self._connection.resume_reading()  # notice the sender leaving

    def _worker_succeeded(self) -> None:
        self.conclude(None)
