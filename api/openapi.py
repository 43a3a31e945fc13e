"""OpenAPI pieces shared by the handlers: the error responses, the bearer scheme, the served document."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Litestar, Request
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from . import docs, document
from .errors import ErrorBody, NotReadyBody

_DESCRIPTIONS = {
    400: "Validation error (`validation_error`, with `details`)",
    401: "Missing or invalid token (`unauthorized`); `WWW-Authenticate: Bearer`",
    403: "Another user's task or `{user_id}` path (`forbidden`)",
    404: "No such task, or an id that is not a UUID (`not_found`)",
    405: "Method not allowed (`method_not_allowed`)",
    408: "The body did not arrive within HTTP_READ_TIMEOUT_S (`request_timeout`)",
    413: "Body over 64 KiB (`payload_too_large`)",
    415: "Body is not `application/json` (`unsupported_media_type`)",
    431: "Request line and headers over 128 KiB (`headers_too_large`)",
    500: "Internal error (`internal_error`), never with details of the cause",
    503: ("Database or JWKS unavailable, or the database's row-level security posture broken "
          "(`service_unavailable` / `auth_unavailable`), with `Retry-After`"),
}


def error_responses(*, body: bool = False) -> dict[int, ResponseSpec]:
    """The error responses of an /api operation (every one may meet 400, 401, 403, 404, 431 and 503)."""
    codes = [400, 401, 403, 404, 431, 503] + ([408, 413, 415] if body else [])
    return {code: ResponseSpec(data_container=ErrorBody, description=_DESCRIPTIONS[code], generate_examples=False)
            for code in codes}


def not_ready_response() -> ResponseSpec:
    """The 503 of /ready: the database is unreachable or not migrated, or the posture guard is closed."""
    return ResponseSpec(
        data_container=NotReadyBody, generate_examples=False,
        description=("Not ready (`service_unavailable`), with `Retry-After`: the database is unreachable or not "
                     "migrated, or `taskapi_audit.findings()` reports an error (or cannot run: "
                     "`findings_unavailable`); then `checks` lists the names of the failing checks and every /api "
                     "request answers 503 too (docs/audit.md)"))


def openapi_config(version: str) -> OpenAPIConfig:
    """OpenAPI 3.1 at /schema/openapi.json, with the bearer scheme applied to every /api operation."""
    return OpenAPIConfig(
        title="taskapi",
        version=version,
        description=("Personal tasks; which rows a caller sees and changes is decided by PostgreSQL "
                     "row-level security. Errors are `{\"error\", \"message\"}` (+ `details`)."),
        # /schema: the offline docs page (api/docs.py); /schema/openapi.json: this document.
        openapi_router=docs.docs_router(),
        components=Components(security_schemes={
            "BearerToken": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT",
                                          description="A JWT whose `sub` is the user id"),
        }),
        # The docs page first: Litestar serves its default plugin at the router's root, /schema.
        render_plugins=[docs.SwaggerPage(), FinishedDocument()],
        create_examples=False,
    )


class FinishedDocument(JsonRenderPlugin):
    """/schema/openapi.json: Litestar's document finished by api/document.py, encoded once."""

    def __init__(self) -> None:
        super().__init__()
        self.body: bytes | None = None

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        if self.body is None:
            self.body = msgspec.json.encode(document.finish(openapi_schema))
        return self.body


def finish_document(app: Litestar) -> dict[str, Any]:
    """Build the served document now, at start: a route the tables of api/document.py do not describe
    fails here (KeyError), not on the first request for the document."""
    assert app.openapi_config is not None
    (plugin,) = [p for p in app.openapi_config.render_plugins if isinstance(p, FinishedDocument)]
    finished = document.finish(app.openapi_schema.to_schema())
    plugin.body = msgspec.json.encode(finished)
    return finished
