"""``orchagent-ctl seed``: orchestrator's seed sequence run against two agents, with live progress.

The calls are :class:`~orchagent.ctl.sequence.SeedSequence`'s, made over treq.  Unlike
orchestrator, a command the agent refuses (any answer but 200) stops the seed with the agent's
message, except the clean-up calls.  Meanwhile a ``LoopingCall`` polls both agents'
``seed-status`` for the display, and wakes the copy loop as soon as the target reports the end
(orchestrator would sleep out its 30 s).

Ending early (a failed call, or Ctrl-C through :meth:`SeedRunner.interrupt`): ``abort-seed`` on
the target, then the source (orchestrator's ``AbortSeed``), wait until both report the seed ended,
and unmount the snapshot the sequence mounted.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import LoopingCall

from orchagent.ctl.client import AgentClient, CtlError, HttpStatusError, status_poll
from orchagent.ctl.progress import human_bytes
from orchagent.ctl.sequence import CLEANUP, Ask, Command, Poll, SeedFailed, SeedSequence, Sleep, State

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130


class _Interrupted(Exception):
    """Ctrl-C: the seed is being aborted."""


class SeedRunner:
    def __init__(self, sequence: SeedSequence, display, clock, *, interval: float = 1.0,
                 abort_wait: float = 60.0):
        """``interval``: seconds between progress polls; ``abort_wait``: how long to wait, after
        an abort, for both agents to report the seed ended."""
        self._sequence = sequence
        self._display = display
        self._clock = clock
        self._interval = interval
        self._abort_wait = abort_wait
        self._current: Deferred | None = None
        self._wake: Deferred | None = None
        self._interrupted = False
        self._aborting = False
        self._statuses: dict[str, dict | None] = {"target": None, "source": None}
        # Twisted 22.4's LoopingCall does not await a coroutine: hand it a Deferred
        self._progress = LoopingCall(lambda: Deferred.fromCoroutine(self._poll_progress()))
        self._progress.clock = clock

    @property
    def _agents(self) -> dict[str, AgentClient]:
        return {"target": self._sequence.target, "source": self._sequence.source}

    def interrupt(self) -> None:
        """Ctrl-C: stop where the sequence is, then abort the seed on both agents."""
        if self._aborting:
            self._display.step("already aborting; waiting for both agents to report the seed ended")
            return
        self._interrupted = True
        if self._current is not None:
            self._current.cancel()

    async def run(self) -> int:
        """Run the seed to its end; the exit status of ``orchagent-ctl seed``."""
        seed_id, started = self._sequence.seed_id, self._clock.seconds()
        try:
            await self._run_steps()
        except _Interrupted:
            return await self._end_early(EXIT_INTERRUPTED, f"seed {seed_id} interrupted (Ctrl-C)")
        except (SeedFailed, CtlError) as e:
            return await self._end_early(EXIT_FAILED, f"seed {seed_id} failed: {e}")
        finally:
            self._stop_progress()
        await self._poll_progress()
        size = human_bytes(self._sequence.source_bytes)
        self._display.result(True, f"seed {seed_id} succeeded: {size} from {self._sequence.source.address} to "
                                   f"{self._sequence.target.address} in {self._clock.seconds() - started:.0f} s; "
                                   f"MySQL was started on the target")
        return EXIT_OK

    async def _run_steps(self) -> None:
        steps = self._sequence.steps()
        answer = None
        try:
            while True:
                try:
                    effect = steps.send(answer)
                except StopIteration:
                    return
                self._current = Deferred.fromCoroutine(self._perform(effect))
                try:
                    answer = await self._current
                except Exception:
                    if self._interrupted:
                        raise _Interrupted() from None
                    raise
                finally:
                    self._current = None
                if self._interrupted:
                    raise _Interrupted()
        finally:
            steps.close()

    async def _perform(self, effect):
        if isinstance(effect, State):
            self._display.step(effect.action)
        elif isinstance(effect, Poll):
            return await status_poll(effect.agent)
        elif isinstance(effect, Ask):
            return (await effect.agent.get(effect.path)) is True
        elif isinstance(effect, Sleep):
            await self._sleep(effect.seconds, wakeable=effect.copy_loop)
        elif isinstance(effect, Command):
            try:
                await effect.agent.get(effect.path, effect.query)
            except CtlError as e:
                if effect.kind != CLEANUP:
                    raise
                self._display.step(f"(ignored) {e}")
            if effect.path.startswith("receive-mysql-seed-data/"):
                self._start_progress()
        else:
            raise TypeError(f"unknown step {effect!r}")

    def _sleep(self, seconds: float, wakeable: bool) -> Deferred:
        def cancel(d: Deferred) -> None:
            if call.active():
                call.cancel()

        done = Deferred(cancel)
        call = self._clock.callLater(seconds, lambda: done.called or done.callback(None))
        if wakeable:
            if self._target_ended():
                call.cancel()
                done.callback(None)
            self._wake = done
        return done

    def _target_ended(self) -> bool:
        return bool(self._statuses["target"] and self._statuses["target"]["Completed"])

    # --- progress ---------------------------------------------------------------------------

    def _start_progress(self) -> None:
        if not self._progress.running:
            self._progress.start(self._interval, now=True).addErrback(lambda f: None)

    def _stop_progress(self) -> None:
        if self._progress.running:
            self._progress.stop()

    async def _poll_progress(self) -> None:
        """Both agents' ``seed-status``; a failed poll keeps the last answer (never kills the loop)."""
        roles = list(self._agents)
        answers = await gatherResults([Deferred.fromCoroutine(self._seed_status(self._agents[role]))
                                       for role in roles], consumeErrors=True).addErrback(lambda f: None)
        if answers is None:
            return
        for role, answer in zip(roles, answers):
            if answer is not False:
                self._statuses[role] = answer
        self._display.progress(dict(self._statuses))
        if self._target_ended() and self._wake is not None and not self._wake.called:
            self._wake.callback(None)

    async def _seed_status(self, agent: AgentClient) -> dict | None | bool:
        """The agent's seed-status; None: it has no such seed; False: no answer this time."""
        try:
            return await agent.get(f"seed-status/{self._sequence.seed_id}")
        except HttpStatusError as e:
            return None if e.status == 404 else False
        except CtlError:
            return False

    # --- ending early -----------------------------------------------------------------------

    async def _end_early(self, code: int, line: str) -> int:
        """Abort the seed on both agents (if it started), wait for both to end it, unmount."""
        self._aborting = True
        self._stop_progress()
        if self._sequence.started:
            self._display.step(f"aborting seed {self._sequence.seed_id} on both agents...")
            if not await self._abort_and_wait():
                code = EXIT_FAILED
                line += (f"; an agent did not report the seed ended within {self._abort_wait:g} s: "
                         f"check seed-status on both")
            else:
                line += "; both agents report the seed ended"
                error = (self._statuses["target"] or {}).get("Error") or (self._statuses["source"] or {}).get("Error")
                if error and error not in line:
                    line += f" (agent: {error})"
        if self._sequence.mounted:
            try:
                await self._sequence.source.get("umount")
                self._sequence.mounted = False
            except CtlError as e:
                line += f"; unmounting the snapshot failed: {e}"
        self._display.result(False, line)
        return code

    async def _abort_and_wait(self) -> bool:
        for agent in (self._sequence.target, self._sequence.source):
            try:
                await agent.get(f"abort-seed/{self._sequence.seed_id}")
            except CtlError as e:
                if not (isinstance(e, HttpStatusError) and e.status == 404):
                    self._display.step(str(e))
        deadline = self._clock.seconds() + self._abort_wait
        while True:
            answers = [await self._seed_status(agent) for agent in self._agents.values()]
            for role, answer in zip(self._agents, answers):
                if answer is not False:
                    self._statuses[role] = answer
            self._display.progress(dict(self._statuses))
            # None: the agent never heard of the seed (the source, when it was never asked to send)
            if all(answer is None or (answer and answer["Completed"]) for answer in answers):
                return True
            if self._clock.seconds() >= deadline:
                return False
            await self._sleep(min(self._interval, 0.5), wakeable=False)
