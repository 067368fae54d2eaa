"""How orchagent-ctl shows a seed: a bar redrawn in place on a terminal, one line per update
otherwise, one JSON object per line with ``--json``.

Each display gets the same three kinds of event: ``step`` (a line of what is being done),
``progress`` (the ``seed-status`` answers of the agents, by role) and ``result`` (the end).
"""

from __future__ import annotations

import json
from typing import IO, Any

BAR_WIDTH = 24


def human_bytes(count: int | None) -> str:
    if count is None:
        return "?"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_seconds(seconds: int | None) -> str:
    if seconds is None:
        return "?"
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def summary(statuses: dict[str, dict | None]) -> dict[str, Any]:
    """Bytes, total, rate, ETA, compression ratio, rate limit, streams, resumes and states of a seed from its
    ``seed-status`` answers (by role).

    The receiver's counts come first (they are what arrived and was verified); the sender's total
    stands in until the receiver has learnt it.
    """
    known = [status for status in statuses.values() if status]
    first = known[0] if known else {}
    done = first.get("BytesDone", 0)
    total = next((s["BytesTotal"] for s in known if s.get("BytesTotal") is not None), None)
    rate = first.get("BytesPerSecond", 0)
    eta = first.get("EtaSeconds")
    if eta is None and rate and total is not None and not first.get("Completed"):
        eta = max(total - done, 0) // rate
    percent = min(100, 100 * done // total) if total else (100 if first.get("Succeeded") else 0)
    ratio = next((s["CompressionRatio"] for s in known if s.get("CompressionRatio")), None)
    limit = next((s["MaxBytesPerSecond"] for s in known if s.get("MaxBytesPerSecond")), None)
    resumes = max((s.get("Resumes", 0) for s in known), default=0)
    resent = max((s.get("ResentBytes", 0) for s in known), default=0)
    streams = max((s.get("Streams") or 1 for s in known), default=1)
    states = ", ".join(f"{role} {status['State']}" if status else f"{role} not started"
                       for role, status in statuses.items())
    return {"done": done, "total": total, "percent": percent, "rate": rate, "eta": eta, "states": states,
            "ratio": ratio, "limit": limit, "resumes": resumes, "resent": resent, "streams": streams}


def progress_text(statuses: dict[str, dict | None], bar: bool) -> str:
    s = summary(statuses)
    text = (f"{s['percent']:3d}%  {human_bytes(s['done'])} of {human_bytes(s['total'])}  "
            f"{human_bytes(s['rate'])}/s  ETA {human_seconds(s['eta'])}  "
            + (f"{s['ratio']:.1f}x compressed  " if s["ratio"] else "")
            + (f"throttled to {human_bytes(s['limit'])}/s  " if s["limit"] else "")
            + (f"{s['streams']} streams  " if s["streams"] > 1 else "")
            + (f"resumed {s['resumes']}x ({human_bytes(s['resent'])} sent again)  " if s["resumes"] else "")
            + f"({s['states']})")
    if not bar:
        return text
    filled = BAR_WIDTH * s["percent"] // 100
    return "[" + "#" * filled + "." * (BAR_WIDTH - filled) + "] " + text


class TerminalDisplay:
    """A bar redrawn with ``\\r``; step lines are printed above it."""

    def __init__(self, out: IO[str], width: int = 100):
        self._out = out
        self._width = width
        self._bar = ""

    def step(self, text: str) -> None:
        self._out.write("\r\x1b[K" + text + "\n" + self._bar)
        self._out.flush()

    def progress(self, statuses: dict[str, dict | None]) -> None:
        self._bar = progress_text(statuses, bar=True)[: self._width - 1]
        self._out.write("\r\x1b[K" + self._bar)
        self._out.flush()

    def result(self, ok: bool, text: str) -> None:
        self._out.write(("\n" if self._bar else "") + text + "\n")
        self._bar = ""
        self._out.flush()


class LineDisplay:
    """One line per step and per progress update that changed something (logs, pipes)."""

    def __init__(self, out: IO[str]):
        self._out = out
        self._last = ""

    def step(self, text: str) -> None:
        self._write(text)

    def progress(self, statuses: dict[str, dict | None]) -> None:
        text = progress_text(statuses, bar=False)
        if text != self._last:
            self._last = text
            self._write(text)

    def result(self, ok: bool, text: str) -> None:
        self._write(text)

    def _write(self, line: str) -> None:
        self._out.write(line + "\n")
        self._out.flush()


class JsonDisplay:
    """``--json``: one object per line, ``{"event": "step"|"progress"|"result", ...}``."""

    def __init__(self, out: IO[str]):
        self._out = out

    def step(self, text: str) -> None:
        self._write({"event": "step", "text": text})

    def progress(self, statuses: dict[str, dict | None]) -> None:
        self._write({"event": "progress", **statuses})

    def result(self, ok: bool, text: str) -> None:
        self._write({"event": "result", "ok": ok, "text": text})

    def _write(self, document: dict) -> None:
        self._out.write(json.dumps(document) + "\n")
        self._out.flush()


def make_display(out: IO[str], as_json: bool, is_terminal: bool, width: int = 100):
    if as_json:
        return JsonDisplay(out)
    return TerminalDisplay(out, width) if is_terminal else LineDisplay(out)
