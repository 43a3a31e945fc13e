"""OpenAPI pieces shared by the handlers (error responses, conditional-request headers), the bearer scheme,
and the served document (finished by api/document.py)."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Litestar, Request
from litestar.datastructures import ResponseHeader
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.params import HeaderParameter

from . import docs, document
from .errors import ErrorBody, NotReadyBody

_DESCRIPTIONS = {
    304: "Not modified: `If-None-Match` names the current version; no body, the current `ETag`",
    400: "Validation error (`validation_error`, with `details`)",
    401: "Missing or invalid token (`unauthorized`); `WWW-Authenticate: Bearer`",
    403: "Another user's task or `{user_id}` path (`forbidden`)",
    404: "No such task, or an id that is not a UUID (`not_found`)",
    405: "Method not allowed (`method_not_allowed`)",
    408: "The body did not arrive within HTTP_READ_TIMEOUT_S (`request_timeout`)",
    409: ("A request with the same `Idempotency-Key` is still in progress (`idempotency_key_in_flight`), "
          "with `Retry-After`"),
    412: ("`If-Match` names no current version of the task (`precondition_failed`); nothing was changed, and "
          "`ETag` is the current version"),
    413: "Body over 64 KiB (`payload_too_large`)",
    415: "Body is not `application/json` (`unsupported_media_type`)",
    422: ("The `Idempotency-Key` was used in the last 24 hours for a different request "
          "(`idempotency_key_reused`)"),
    431: "Request line and headers over 128 KiB (`headers_too_large`)",
    500: "Internal error (`internal_error`), never with details of the cause",
    503: ("Database or JWKS unavailable, or the database's row-level security posture broken "
          "(`service_unavailable` / `auth_unavailable`), with `Retry-After`"),
}

# RFC 9110 §8.8.3 and §13.1.1-2, as JSON Schema: `*` or a list of entity tags. Only visible ASCII in a
# tag (etagc without obs-text), which is what this API sends.
_ENTITY_TAG = '(?:W/)?"[!#-~]*"'
_ENTITY_TAGS = f"^[ \\t]*(?:\\*|{_ENTITY_TAG}(?:[ \\t]*,[ \\t]*{_ENTITY_TAG})*)[ \\t]*$"
# oneOf None drops the `string | null` Litestar derives from the handler's `str | None`.
_ENTITY_TAGS_SCHEMA = {"oneOf": None, "type": "string", "pattern": _ENTITY_TAGS}


def error_responses(*, body: bool = False, not_modified: bool = False, if_match: bool = False,
                    idempotency_key: bool = False) -> dict[int, ResponseSpec]:
    """The responses of an /api operation besides its success.

    Every one may meet 400, 401, 403, 404, 431 and 503; those with a body 408, 413 and 415 too. A
    conditional GET adds 304, a write that takes If-Match 412, a create that takes an Idempotency-Key
    409 and 422.
    """
    codes = [400, 401, 403, 404, 431, 503] + ([408, 413, 415] if body else []) + ([412] if if_match else []) \
        + ([409, 422] if idempotency_key else [])
    responses = {code: ResponseSpec(data_container=ErrorBody, description=_DESCRIPTIONS[code],
                                    generate_examples=False) for code in codes}
    if not_modified:
        responses[304] = ResponseSpec(data_container=None, description=_DESCRIPTIONS[304], generate_examples=False)
    return responses


def if_match_parameter() -> Any:
    """The If-Match request header of a write, for the OpenAPI document (api/preconditions.py reads it)."""
    return HeaderParameter(name="If-Match", required=False, schema_extra=_ENTITY_TAGS_SCHEMA,
                     description=("Change the task only if its current `ETag` is one of these (strong comparison: "
                                  "a weak tag never matches), else 412 and nothing changes; `*`: only if it exists"))


def if_none_match_parameter() -> Any:
    """The If-None-Match request header of a GET, for the OpenAPI document (api/preconditions.py reads it)."""
    return HeaderParameter(name="If-None-Match", required=False, schema_extra=_ENTITY_TAGS_SCHEMA,
                     description=("304 without a body when the current `ETag` is one of these (weak comparison); "
                                  "`*` matches any"))


def idempotency_key_parameter() -> Any:
    """The Idempotency-Key request header of a create, for the OpenAPI document (api/idempotency.py reads it)."""
    return HeaderParameter(name="Idempotency-Key", required=False,
                     schema_extra={"oneOf": None, "type": "string", "pattern": "^[!-~]{1,255}$",
                                   "minLength": 1, "maxLength": 255},
                     description=("1 to 255 visible ASCII characters, unique per create (a UUID will do). A retry "
                                  "with the same key and body within 24 hours returns the original 201 without "
                                  "creating another task; the same key with another body is 422, and while the "
                                  "first request is still running, 409"))


def etag_header() -> ResponseHeader:
    """The ETag of a single-task response (a strong validator: the task's version)."""
    return ResponseHeader(name="ETag", value="", documentation_only=True, required=True,
                          description="The task's version, a strong entity tag: send it back in `If-Match`")


def location_header() -> ResponseHeader:
    return ResponseHeader(name="Location", value="", documentation_only=True, required=True,
                          description="`/api/tasks/{id}` of the new task")


def link_header() -> ResponseHeader:
    return ResponseHeader(name="Link", value="", documentation_only=True, required=False,
                          description='`<...>; rel="next"`: the next page, when there is one')


def list_etag_header() -> ResponseHeader:
    return ResponseHeader(name="ETag", value="", documentation_only=True, required=True,
                          description="A strong entity tag of the page, its total_count and next_cursor: send it "
                                      "back in `If-None-Match`")


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
