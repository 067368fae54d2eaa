"""The API described in OpenAPI 3, generated from the one route table, served at ``/api/openapi.json``.

Generated, not written by hand, so it cannot drift from what the agent serves: every route's
method, path parameters (V1's ``:name`` becomes ``{name}``), query parameters, summary and
whether it needs the token come from :class:`~orchagent.web.routes.Route`.
"""

from __future__ import annotations

import re

from orchagent import __version__
from orchagent.web.routes import Route

OPENAPI_PATH = "/api/openapi.json"

_ERROR_ENVELOPE = {
    "type": "object",
    "properties": {"Code": {"type": "string", "enum": ["ERROR"]}, "Message": {"type": "string"},
                   "Details": {"nullable": True}},
    "required": ["Code", "Message", "Details"],
}


def with_openapi(routes: tuple[Route, ...]) -> tuple[Route, ...]:
    """``routes`` plus the route serving their description (itself included)."""
    async def describe(req) -> dict:
        return document

    table = routes + (Route("GET", OPENAPI_PATH, describe, token=False,
                            summary="This document: the agent's API in OpenAPI 3"),)
    document = openapi_document(table)
    return table


def openapi_document(routes: tuple[Route, ...]) -> dict:
    paths: dict[str, dict] = {}
    for route in routes:
        path = re.sub(r":([A-Za-z]+)", r"{\1}", route.pattern)
        paths.setdefault(path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.0.3",
        "info": {"title": "orchagent", "version": __version__,
                 "description": "The orchestrator-agent API as orchagent serves it. Every route also answers "
                                "with one trailing slash, GET routes answer HEAD, and responses are gzipped "
                                "when the client asks."},
        "paths": paths,
        "components": {
            "securitySchemes": {"token": {"type": "apiKey", "in": "query", "name": "token",
                                          "description": "The agent's token (TokenHttpHeader may carry it too)"}},
            "schemas": {"Error": _ERROR_ENVELOPE},
        },
    }


def _operation(route: Route) -> dict:
    parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in re.findall(r":([A-Za-z]+)", route.pattern)]
    parameters += [{"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
                   for name in route.query]
    error = {"description": "The V1 error envelope, with an honest status code",
             "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    operation = {
        "summary": route.summary,
        "operationId": route.method.lower() + re.sub(r"[^A-Za-z0-9]+", "_", route.pattern).rstrip("_"),
        "security": [{"token": []}] if route.token else [],
        "responses": {"200": {"description": "OK"}, "default": error},
    }
    if parameters:
        operation["parameters"] = parameters
    if route.max_body:
        operation["requestBody"] = {"required": True, "content": {"text/plain": {
            "schema": {"type": "string", "maxLength": route.max_body}}}}
    if route.changes:
        operation["description"] = "Changes the host: every call is recorded in the audit log."
    return operation
