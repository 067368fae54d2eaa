"""An orchestrator-shaped client: the calls stock orchestrator makes to agents, made the same way.

Integration tests and the demo drive real agents with it exactly as orchestrator 3.x does
(contract B.1 and B.2)::

    orchestrator = Orchestrator()
    target = HostAgent.of(running_agent)              # a host_agent row: hostname, port, token
    agent = orchestrator.get_agent(target)            # the 9 GETs of B.1.2, in order
    orchestrator.command(target, "mountlv?lv=/snapshots/s1")   # a B.1.3 command
    run = orchestrator.seed(target, source, seed_id=1, poll_seconds=0.5)   # B.2.2 and B.2.3

URLs are built as orchestrator builds them: ``<base>/api/<command>?token=T``, or ``&token=T``
when the command already has a ``?``, nothing URL-escaped; the request carries Go's headers
(``Accept-Encoding: gzip``, which Go then decodes transparently).

Answers orchestrator decodes are decoded with the rules of Go's ``encoding/json`` into the
fields of orchestrator's ``Agent`` (integers must be integer literals, booleans bare booleans,
lists lists, objects with the Go field names).  Where orchestrator would log the error and go
on with a zero value, this client raises :class:`ContractViolation`, and it is stricter than Go
where our contract is ("Our rules" 2): nothing is ``null`` (lists least of all) and objects carry
exactly the Go field names.  An agent may refuse a status question with an honest error status
and the V1 error envelope (B.5 item 6): the field then keeps Go's zero value, as in orchestrator,
and the message is kept in ``Agent.errors``.  Command answers orchestrator ignores are recorded,
never judged.

Blocking (``http.client``): the agents are other processes, so no reactor is needed here.
"""

from __future__ import annotations

import gzip
import http.client
import json
import ssl
import time
from typing import Any, Callable

import attrs

from orchagent.ctl.sequence import STEP, Ask, Command, Poll, SeedFailed, SeedSequence, Sleep, State

GO_USER_AGENT = "Go-http-client/1.1"
AGENT_HTTP_TIMEOUT_SECONDS = 60  # orchestrator's AgentHttpTimeoutSeconds (dial and header timeout)


class ContractViolation(AssertionError):
    """An answer that orchestrator could not decode, or that breaks our stricter rules."""


# --- Go types and encoding/json decoding ------------------------------------------------------

STRING, BOOL, INT64, FLOAT64 = "string", "bool", "int64", "float64"


@attrs.frozen
class GoSlice:
    element: Any

    def __str__(self) -> str:
        return f"[]{self.element}"


@attrs.frozen
class GoStruct:
    name: str
    fields: tuple[tuple[str, Any], ...]

    def __str__(self) -> str:
        return f"agent.{self.name}"


LOGICAL_VOLUME = GoStruct("LogicalVolume", (
    ("Name", STRING), ("GroupName", STRING), ("Path", STRING), ("IsSnapshot", BOOL),
    ("SnapshotPercent", FLOAT64)))
MOUNT = GoStruct("Mount", (
    ("Path", STRING), ("Device", STRING), ("LVPath", STRING), ("FileSystem", STRING),
    ("IsMounted", BOOL), ("DiskUsage", INT64), ("MySQLDataPath", STRING), ("MySQLDiskUsage", INT64)))

#: B.1.2: the status poll, in orchestrator's order: (path, Agent field, Go type).
STATUS_POLL = (
    ("available-snapshots-local", "AvailableLocalSnapshots", GoSlice(STRING)),
    ("available-snapshots", "AvailableSnapshots", GoSlice(STRING)),
    ("lvs-snapshots", "LogicalVolumes", GoSlice(LOGICAL_VOLUME)),
    ("mount", "MountPoint", MOUNT),
    ("mysql-status", "MySQLRunning", BOOL),
    ("mysql-port", "MySQLPort", INT64),
    ("mysql-du", "MySQLDiskUsage", INT64),
    ("mysql-datadir-available-space", "MySQLDatadirDiskFree", INT64),
    ("mysql-error-log-tail", "MySQLErrorLogTail", GoSlice(STRING)),
)


class _FloatLiteral(str):
    """A JSON number written with a fraction or an exponent: Go's int64 refuses it."""


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON (Go's encoding/json refuses it)")


def go_decode(body: bytes, go_type: Any, what: str = "the answer") -> Any:
    """``body`` decoded into ``go_type`` as ``json.Unmarshal`` would, or ContractViolation."""
    try:
        value = json.loads(body.decode("utf-8"), parse_float=_FloatLiteral, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise ContractViolation(f"{what}: not valid JSON ({e}): {body[:200]!r}") from None
    return _convert(value, go_type, what)


def zero_value(go_type: Any) -> Any:
    """What a Go variable of ``go_type`` holds when nothing was decoded into it."""
    if isinstance(go_type, GoStruct):
        return {name: zero_value(field_type) for name, field_type in go_type.fields}
    return {STRING: "", BOOL: False, INT64: 0, FLOAT64: 0.0}.get(go_type, [])


def error_message(body: bytes, what: str) -> str:
    """The Message of the V1 error envelope ``{"Code":"ERROR","Message":...,"Details":null}``."""
    try:
        envelope = json.loads(body)
    except ValueError:
        envelope = None
    if (type(envelope) is not dict or sorted(envelope) != ["Code", "Details", "Message"]
            or envelope["Code"] != "ERROR" or type(envelope["Message"]) is not str or envelope["Details"] is not None):
        raise ContractViolation(f"{what}: an error answer without the V1 error envelope: {body[:300]!r}")
    return envelope["Message"]


def _json_kind(value: Any) -> str:
    if value is True or value is False:
        return "bool"
    if isinstance(value, _FloatLiteral):
        return f"number {value}"
    if isinstance(value, int):
        return f"number {value}"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _convert(value: Any, go_type: Any, where: str) -> Any:
    def refuse() -> ContractViolation:
        return ContractViolation(f"{where}: json: cannot unmarshal {_json_kind(value)} into Go value "
                                 f"of type {go_type}")

    if value is None:
        # Go leaves the zero value; our agent must never send null (lists least of all).
        raise ContractViolation(f"{where}: null where orchestrator expects {go_type}")
    if go_type == STRING:
        if type(value) is not str:
            raise refuse()
        return value
    if go_type == BOOL:
        if value is not True and value is not False:
            raise refuse()
        return value
    if go_type == INT64:
        if type(value) is not int or not -2 ** 63 <= value < 2 ** 63:
            raise refuse()
        return value
    if go_type == FLOAT64:
        if isinstance(value, _FloatLiteral) or type(value) is int:
            return float(value)
        raise refuse()
    if isinstance(go_type, GoSlice):
        if type(value) is not list:
            raise refuse()
        return [_convert(item, go_type.element, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(go_type, GoStruct):
        if type(value) is not dict:
            raise refuse()
        names = [name for name, _ in go_type.fields]
        if sorted(value) != sorted(names):
            raise ContractViolation(f"{where}: {go_type.name} keys {sorted(value)}, expected exactly the Go "
                                    f"field names {sorted(names)}")
        return {name: _convert(value[name], field_type, f"{where}.{name}") for name, field_type in go_type.fields}
    raise TypeError(f"unknown Go type {go_type!r}")


# --- agents and calls ----------------------------------------------------------------------------


@attrs.frozen
class HostAgent:
    """What orchestrator's ``host_agent`` row holds about an agent (B.0.2)."""

    hostname: str
    port: int
    token: str
    scheme: str = "http"

    @classmethod
    def of(cls, running) -> "HostAgent":
        """From a :class:`testbed.agent.RunningAgent` (its address is its hostname)."""
        return cls(running.address, running.port, running.token, running.scheme)


def command_url(agent: HostAgent, command: str) -> str:
    """The URL orchestrator's ``executeAgentCommand`` requests: nothing is escaped."""
    separator = "&" if "?" in command else "?"
    return f"{agent.scheme}://{agent.hostname}:{agent.port}/api/{command}{separator}token={agent.token}"


@attrs.frozen
class Call:
    """One request as orchestrator made it, and what came back."""

    host: str
    command: str  # the part after /api/, without the token
    status: int | None  # None: a transport error (Go's err)
    body: bytes
    gzipped: bool
    error: str = ""
    seconds: float = attrs.field(default=0.0, eq=False)  # from sending the request to having the whole answer

    def json(self) -> Any:
        return json.loads(self.body)


@attrs.define
class Agent:
    """orchestrator's ``Agent`` struct (go/agent/agent.go); field names as in Go."""

    Hostname: str
    Port: int
    Token: str
    AvailableLocalSnapshots: list[str] = attrs.Factory(list)
    AvailableSnapshots: list[str] = attrs.Factory(list)
    LogicalVolumes: list[dict] = attrs.Factory(list)
    MountPoint: dict = attrs.Factory(dict)
    MySQLRunning: bool = False
    MySQLPort: int = 0
    MySQLDiskUsage: int = 0
    MySQLDatadirDiskFree: int = 0
    MySQLErrorLogTail: list[str] = attrs.Factory(list)
    errors: dict[str, str] = attrs.Factory(dict)  # not in Go: field -> the agent's error message


@attrs.define
class SeedState:
    """A row of ``agent_seed_state``."""

    action: str
    error: str = ""


@attrs.define
class SeedRun:
    """What ``executeSeed`` did: orchestrator's state rows, every agent call, the copy progress."""

    seed_id: int
    target: str
    source: str
    states: list[SeedState] = attrs.Factory(list)
    calls: list[Call] = attrs.Factory(list)
    copied: list[int] = attrs.Factory(list)  # the target's mysql-du at each round of the copy loop
    source_bytes: int = 0  # N: the mounted snapshot's MySQLDiskUsage
    error: str = ""  # what executeSeed returned; "" means success (is_successful=1)

    @property
    def succeeded(self) -> bool:
        return not self.error

    def commands(self, host: str | None = None) -> list[str]:
        """The commands sent (to ``host`` only, if given), in order."""
        return [call.command for call in self.calls if host is None or call.host == host]


class Orchestrator:
    """Makes orchestrator's agent calls; every call is also appended to :attr:`calls`."""

    def __init__(self, timeout: float = AGENT_HTTP_TIMEOUT_SECONDS, ca_file: str | None = None):
        """``ca_file``: trusted for HTTPS agents, as a CA in orchestrator's system store would be."""
        self.timeout = timeout
        self.calls: list[Call] = []
        self._tls = ssl.create_default_context(cafile=ca_file) if ca_file else None

    # --- B.1.1: one request -------------------------------------------------------------------

    def command(self, agent: HostAgent, command: str, record: list[Call] | None = None) -> Call:
        """GET ``command`` as executeAgentCommand does (B.1.3), recorded and, as by orchestrator, not
        judged; a transport error becomes ``Call.error``."""
        url = command_url(agent, command)
        started = time.monotonic()
        if agent.scheme == "https":
            connection = http.client.HTTPSConnection(agent.hostname, agent.port, timeout=self.timeout,
                                                     context=self._tls)
        else:
            connection = http.client.HTTPConnection(agent.hostname, agent.port, timeout=self.timeout)
        try:
            # Go sends exactly these headers; http.client would add Accept-Encoding: identity.
            connection.putrequest("GET", url[url.index("/api/"):], skip_accept_encoding=True)
            connection.putheader("User-Agent", GO_USER_AGENT)
            connection.putheader("Accept-Encoding", "gzip")
            connection.endheaders()
            response = connection.getresponse()
            body = response.read()
            gzipped = (response.getheader("Content-Encoding") or "").lower() == "gzip"
            if gzipped:
                body = gzip.decompress(body)
            call = Call(agent.hostname, command, response.status, body, gzipped,
                        seconds=time.monotonic() - started)
        except (OSError, http.client.HTTPException) as e:
            call = Call(agent.hostname, command, None, b"", False, f"Get {url.split('?')[0]}: {e}",
                        time.monotonic() - started)
        finally:
            connection.close()
        self.calls.append(call)
        if record is not None:
            record.append(call)
        return call

    def decoded(self, agent: HostAgent, command: str, go_type: Any,
                record: list[Call] | None = None) -> tuple[Any, str]:
        """An answer orchestrator decodes: ``(value, "")``, or ``(zero value, message)`` for an error answer.

        Anything else (no answer, a 200 that does not decode into ``go_type``, an error answer
        without the V1 envelope) is a ContractViolation.
        """
        call = self.command(agent, command, record)
        what = f"{agent.hostname} {command}"
        if call.status is None:
            raise ContractViolation(f"{what}: no answer: {call.error}")
        if call.status != 200:
            return zero_value(go_type), error_message(call.body, f"{what} (status {call.status})")
        return go_decode(call.body, go_type, what), ""

    def answer(self, running, command: str) -> tuple[int | None, Any]:
        """(status, decoded JSON body) of ``command`` on a :class:`testbed.agent.RunningAgent`."""
        call = self.command(HostAgent.of(running), command)
        return call.status, call.json() if call.body else None

    # --- B.1.2: the status poll ---------------------------------------------------------------

    def get_agent(self, agent: HostAgent, record: list[Call] | None = None) -> Agent:
        """``GetAgent``: the 9 GETs, in order, each decoded into its Agent field."""
        result = Agent(agent.hostname, agent.port, agent.token)
        for command, field, go_type in STATUS_POLL:
            value, error = self.decoded(agent, command, go_type, record)
            setattr(result, field, value)
            if error:
                result.errors[field] = error
        return result

    # --- B.2.4: the orchestrator API's agent-abort-seed ---------------------------------------

    def abort_seed(self, seed_id: int, target: HostAgent, source: HostAgent) -> None:
        """``AbortSeed``: abort-seed on the target, then the source; results ignored."""
        self.command(target, f"abort-seed/{seed_id}")
        self.command(source, f"abort-seed/{seed_id}")

    # --- B.2.2 and B.2.3: executeSeed ---------------------------------------------------------

    def seed(self, target: HostAgent, source: HostAgent, seed_id: int, *, wait_before_send: float = 2,
             poll_seconds: float = 30, on_state: Callable[[SeedRun, SeedState], None] | None = None) -> SeedRun:
        """Run ``executeSeed(seed_id, target, source)``; the run says what happened.

        The steps are orchagent-ctl's :class:`SeedSequence` (one definition of orchestrator's
        sequence); this runs them as orchestrator does: blocking, decoding as Go does, failing a
        step only on a transport error.  ``wait_before_send`` is SeedWaitSecondsBeforeSend;
        ``poll_seconds`` the copy loop's sleep (30 s in orchestrator; tests use less).
        ``on_state(run, state)`` sees each state row as it is written (the demo prints them; tests
        act at a given step).
        """
        run = SeedRun(seed_id, target.hostname, source.hostname)
        sequence = SeedSequence(seed_id, target, source, wait_before_send=wait_before_send,
                                poll_seconds=poll_seconds)
        steps = sequence.steps()
        current: list[SeedState] = []  # the row executeSeed's seedStateId points at
        answer = None
        try:
            while True:
                effect = steps.send(answer)
                if isinstance(effect, State):
                    row = SeedState(effect.action)
                    run.states.append(row)
                    if effect.tracked:
                        current[:] = [row]
                    if on_state is not None:
                        on_state(run, row)
                answer = self._perform(effect, run)
        except StopIteration:
            pass
        except SeedFailed as e:
            run.error = current[0].error = str(e)  # updateSeedStateEntry(seedStateId, err)
        finally:
            steps.close()
        run.copied, run.source_bytes = sequence.copied, sequence.source_bytes
        return run

    def _perform(self, effect, run: SeedRun) -> Any:
        if isinstance(effect, Poll):
            return self.get_agent(effect.agent, run.calls)
        if isinstance(effect, Ask):
            return self.decoded(effect.agent, effect.path, BOOL, run.calls)[0]
        if isinstance(effect, Sleep):
            time.sleep(effect.seconds)
        elif isinstance(effect, Command):
            query = "&".join(f"{name}={value}" for name, value in effect.query)  # nothing escaped
            call = self.command(effect.agent, effect.path + ("?" + query if query else ""), run.calls)
            if effect.kind == STEP and call.status is None:  # only transport errors are errors to orchestrator
                raise SeedFailed(call.error)
        return None
