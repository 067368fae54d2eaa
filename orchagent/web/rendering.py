"""JSON exactly as orchestrator-agent's Go renderer wrote it (contract A.1)."""

import json
import math
from typing import Any

_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_GO_ESCAPE_TABLE = str.maketrans(_GO_ESCAPES)


def render_json(value: Any) -> bytes:
    """Compact UTF-8 JSON, Go's HTML-safe escapes, whole floats printed as integers (``50`` not ``50.0``).

    The escaped characters can only occur inside JSON strings, so translating the whole text is safe.
    """
    text = json.dumps(_go_values(value), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.translate(_GO_ESCAPE_TABLE).encode("utf-8")


def error_envelope(message: str) -> dict:
    """V1's ``APIResponse`` for every failure."""
    return {"Code": "ERROR", "Message": message, "Details": None}


def ok_envelope(message: str) -> dict:
    return {"Code": "OK", "Message": message, "Details": None}


def _go_values(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _go_values(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_go_values(item) for item in value]
    return value
