"""Every error response: the error types, the SQLSTATE table, and the Litestar exception handlers.

A response body is always ``{"error": code, "message": text}`` (plus ``details`` for validation);
codes are stable and never reused. Nothing from an exception's text (SQL, values, paths, secrets)
reaches a client: messages come from this module only.
"""

from __future__ import annotations

import datetime
import logging
import re
import types
import typing
from collections.abc import Collection
from typing import Annotated, Any

import msgspec
import psycopg
import psycopg_pool
from litestar import Request, Response
from litestar.enums import MediaType
from litestar.exceptions import HTTPException, ValidationException

log = logging.getLogger("taskapi.errors")


class ErrorDetail(msgspec.Struct):
    """One problem with one field of a request."""

    field: Annotated[str, msgspec.Meta(description="The field: `title`, `tags[2]`, a query parameter, or `body`.")]
    message: Annotated[str, msgspec.Meta(description="The rule it broke, e.g. `must be a boolean`.")]


# Every code an error body may carry; stable, never reused (CONTRACT.md section 4).
ERROR_CODES = ("validation_error", "unauthorized", "forbidden", "not_found", "method_not_allowed", "request_timeout",
               "idempotency_key_in_flight", "precondition_failed", "payload_too_large", "unsupported_media_type",
               "idempotency_key_reused", "headers_too_large", "internal_error", "service_unavailable",
               "auth_unavailable")


class ErrorBody(msgspec.Struct, omit_defaults=True):
    """The body of every error response."""

    error: Annotated[str, msgspec.Meta(
        description="A stable code: " + ", ".join(f"`{code}`" for code in ERROR_CODES) + ".")]
    message: Annotated[str, msgspec.Meta(description="For people; may change between versions.")]
    details: Annotated[list[ErrorDetail], msgspec.Meta(
        description="With `validation_error`: each field and what is wrong with it.")] | None = None


class NotReadyBody(ErrorBody, omit_defaults=True):
    """The body of a 503 from /ready; `checks` names the failing findings when the posture is the cause."""

    checks: list[str] | None = None


class ApiError(Exception):
    """An error with its HTTP status, stable code, client-facing message and headers."""

    status = 500
    code = "internal_error"
    # The SQLSTATE of the database error this was translated from (`from_database`), else None: code
    # that must tell one database failure from another reads it here, never from `__cause__`.
    sqlstate: str | None = None

    def __init__(self, message: str, *, headers: dict[str, str] | None = None,
                 details: list[ErrorDetail] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        self.details = details


class BadRequest(ApiError):
    status, code = 400, "validation_error"


class Unauthorized(ApiError):
    """401; `token_sent` decides whether WWW-Authenticate says ``error="invalid_token"``."""

    status, code = 401, "unauthorized"

    def __init__(self, message: str, *, token_sent: bool = True) -> None:
        challenge = 'Bearer error="invalid_token"' if token_sent else "Bearer"
        if token_sent:
            challenge += f', error_description="{message}"'
        super().__init__(message, headers={"WWW-Authenticate": challenge})


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class NotFound(ApiError):
    status, code = 404, "not_found"


class IdempotencyKeyInFlight(ApiError):
    """409: a request with the same Idempotency-Key is still being processed; retry after it."""

    status, code = 409, "idempotency_key_in_flight"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": RETRY_AFTER_S})


class PreconditionFailed(ApiError):
    """412: If-Match named no current version; `etag` is the current one, for the client to re-read."""

    status, code = 412, "precondition_failed"

    def __init__(self, message: str, *, etag: str) -> None:
        super().__init__(message, headers={"ETag": etag})


class IdempotencyKeyReused(ApiError):
    """422: the Idempotency-Key was used before with a different request."""

    status, code = 422, "idempotency_key_reused"


class RequestTimeout(ApiError):
    """408: the body did not arrive within HTTP_READ_TIMEOUT_S (api/limits.py)."""

    status, code = 408, "request_timeout"


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_media_type"


class HeadersTooLarge(ApiError):
    """431: the request line and headers are over api/limits.py's MAX_HEAD_BYTES."""

    status, code = 431, "headers_too_large"


RETRY_AFTER_S = "1"


class ServiceUnavailable(ApiError):
    """503: the database is unreachable, overloaded or slow; the client may retry."""

    status, code = 503, "service_unavailable"

    def __init__(self, message: str = "the database is unavailable, retry shortly", *,
                 retry_after: str = RETRY_AFTER_S) -> None:
        super().__init__(message, headers={"Retry-After": retry_after})


class AuthUnavailable(ApiError):
    """503: the JWKS needed to check this token cannot be fetched right now."""

    status, code = 503, "auth_unavailable"

    def __init__(self, message: str = "the token's signing keys cannot be fetched, retry shortly") -> None:
        super().__init__(message, headers={"Retry-After": RETRY_AFTER_S})


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), for one-line reports."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def validation_error(field: str, message: str) -> BadRequest:
    """A 400 for one field."""
    return BadRequest("the request is not valid", details=[ErrorDetail(field, message)])


# SQLSTATE → what the client sees. Anything not listed is a 500 and is logged with its traceback.
_SQLSTATES: dict[str, type[ServiceUnavailable] | tuple[type[ApiError], str]] = {
    # a row broke a table constraint: the constraints repeat the contract's limits
    "23514": (BadRequest, "a value is outside the limits of the contract"),  # check_violation
    "23502": (BadRequest, "a required value is missing"),  # not_null_violation
    "22001": (BadRequest, "a value is too long"),  # string_data_right_truncation
    "22021": (BadRequest, "text is not valid in the database encoding"),  # character_not_in_repertoire
    "22P05": (BadRequest, "text cannot be stored"),  # untranslatable_character
    # a policy's WITH CHECK refused the row: the caller tried to write as someone else
    "42501": (Forbidden, "this task belongs to another user"),  # insufficient_privilege
    # statement_timeout (DB_STATEMENT_TIMEOUT_MS) or a cancelled query: the database is too slow now
    "57014": ServiceUnavailable,  # query_canceled
    # the server is shutting down, restarting or out of connections
    "57P01": ServiceUnavailable,  # admin_shutdown
    "57P02": ServiceUnavailable,  # crash_shutdown
    "57P03": ServiceUnavailable,  # cannot_connect_now
    "53300": ServiceUnavailable,  # too_many_connections
    "53000": ServiceUnavailable,  # insufficient_resources
    "40001": ServiceUnavailable,  # serialization_failure
    "40P01": ServiceUnavailable,  # deadlock_detected
    "25006": ServiceUnavailable,  # read_only_sql_transaction: a failover left us on a standby
    # schema missing: the database was not migrated (or is being migrated)
    "42P01": ServiceUnavailable,  # undefined_table
    "42883": ServiceUnavailable,  # undefined_function
    "3F000": ServiceUnavailable,  # invalid_schema_name
}


DatabaseFailure = psycopg.Error | psycopg_pool.PoolTimeout | psycopg_pool.TooManyRequests | TimeoutError


def from_database(exc: DatabaseFailure) -> ApiError:
    """Translate a driver or pool error into the `ApiError` the client sees.

    `TimeoutError` is api/pipeline.py's: no reply came in time from a server that did not close the
    connection.
    """
    if isinstance(exc, psycopg_pool.PoolTimeout | psycopg_pool.TooManyRequests):
        return ServiceUnavailable("the database is busy, retry shortly")
    if isinstance(exc, TimeoutError):
        return ServiceUnavailable("the database did not answer in time, retry shortly")
    sqlstate = getattr(exc, "sqlstate", None)
    error = _translate(exc, sqlstate)
    error.sqlstate = sqlstate
    return error


# A CHECK constraint whose violation the API cannot see coming from the request alone (it depends on
# the stored row): the field and the rule, for the client. Any other check_violation keeps the generic
# message of _SQLSTATES.
_CONSTRAINTS = {
    "tasks_recurrence_needs_due_at": ("recurrence", "a recurring task needs a due_at"),
    "tasks_tags_valid": ("tags", "at most 20 tags of 1 to 50 characters, distinct ignoring case"),
}


def _translate(exc: psycopg.Error, sqlstate: str | None) -> ApiError:
    if sqlstate == "23514" and (field := _CONSTRAINTS.get(exc.diag.constraint_name or "")):
        return validation_error(*field)
    mapped = _SQLSTATES.get(sqlstate or "")
    if mapped is None:
        if isinstance(exc, psycopg.OperationalError):
            return ServiceUnavailable()  # connection lost or refused: no SQLSTATE
        return ApiError("internal error")
    if isinstance(mapped, tuple):
        kind, message = mapped
        return kind(message)
    return mapped()


_HTTP_CODES = {
    400: "validation_error", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 408: "request_timeout", 413: "payload_too_large",
    415: "unsupported_media_type", 431: "headers_too_large", 503: "service_unavailable",
}
_HTTP_MESSAGES = {
    400: "the request is not valid", 404: "no such resource", 405: "method not allowed",
    413: "the request body is larger than 64 KiB",
}


def respond(status: int, code: str, message: str, *, headers: dict[str, str] | None = None,
            details: list[ErrorDetail] | None = None, checks: list[str] | None = None) -> Response[ErrorBody]:
    """The one way an error response is built (`checks` only on /ready, see `NotReadyBody`).

    The media type is explicit: a handler's own (the HTML of Litestar's /schema 404) must not apply.
    """
    if checks is not None:
        return Response(NotReadyBody(code, message, details, checks), status_code=status, headers=headers,
                        media_type=MediaType.JSON)
    return Response(ErrorBody(code, message, details), status_code=status, headers=headers, media_type=MediaType.JSON)


def handle_api_error(request: Request[Any, Any, Any], exc: ApiError) -> Response[ErrorBody]:
    """Exception handler for `ApiError` (and, via `handle_exception`, everything else)."""
    if exc.code == "internal_error":  # e.g. a database error no SQLSTATE above maps: its cause is the story
        _log_internal_error(request, exc)
    return respond(exc.status, exc.code, exc.message, headers=exc.headers, details=exc.details)


def handle_http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorBody]:
    """Litestar's own errors (routing, body size, query parameters) in the contract's shape."""
    status = exc.status_code
    if status >= 500:
        return handle_exception(request, exc)
    details = None
    if isinstance(exc, ValidationException):
        details = _details_from_litestar(exc.extra)
    elif status == 400:
        details = [ErrorDetail("body", "not valid JSON (UTF-8)")]
    headers = dict(exc.headers or {})
    code = _HTTP_CODES.get(status, "validation_error" if status < 500 else "internal_error")
    message = _HTTP_MESSAGES.get(status, "the request is not valid")
    return respond(status, code, message, headers=headers or None, details=details)


def handle_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    """Anything unexpected: a 500, its cause logged server-side only.

    Database errors never arrive here: api/db.py translates them (`from_database`) where they happen.
    """
    _log_internal_error(request, exc)
    return respond(500, "internal_error", "internal error")


def _log_internal_error(request: Request[Any, Any, Any], exc: BaseException) -> None:
    """The one place a 500's cause is recorded: server-side, with the request id, never in the response."""
    log.error("unhandled error on %s %s [request %s]", request.method, request.scope.get("path_template", "?"),
              request.scope.get("taskapi.request_id", "-"), exc_info=exc)


def from_body_error(exc: msgspec.DecodeError | UnicodeDecodeError, model: type[msgspec.Struct], *,
                    read_only: Collection[str] = ()) -> BadRequest:
    """A strict msgspec decode of a request body into `model` failed: name the field and the rule it broke.

    Only *where* the problem is comes from msgspec's message; *what* the client is told comes from the
    type the field is declared with (`expectation`), in this API's words, so a msgspec release that
    rewords its messages changes nothing a client sees. `read_only` are fields the server sets.
    """
    if not isinstance(exc, msgspec.ValidationError):
        return validation_error("body", "not valid JSON (UTF-8)")
    text = str(exc)
    if match := _UNKNOWN_FIELD.match(text):
        name = match[1]
        return validation_error(name, "read-only: set by the server" if name in read_only else "unknown field")
    if match := _MISSING_FIELD.match(text):
        return validation_error(match[1], "required")
    _, _, where = text.rpartition(" - at `$")
    path = _PATH_STEP.findall(where.rstrip("`")) if where else []
    if not path:  # the body itself is not an object
        return validation_error("body", "must be a JSON object")
    field = path[0][0] + "".join(f"[{index}]" for _, index in path[1:])
    try:
        annotation = _annotation_at(model, path[0][0], depth=len(path) - 1)
    except (KeyError, TypeError):
        return validation_error(field, "is not valid")  # a path the declared types do not explain
    return validation_error(field, expectation(annotation))


_UNKNOWN_FIELD = re.compile(r"Object contains unknown field `([^`]*)`")
_MISSING_FIELD = re.compile(r"Object missing required field `([^`]*)`")
# `$.tags[3]` -> ("tags", ""), ("", "3")
_PATH_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


def expectation(annotation: Any) -> str:
    """What a value of this declared type must be, as a validation message ("must be a boolean")."""
    return "must be " + _noun(annotation)


def _noun(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        base = args[0]
        limits = [meta.max_length for meta in args[1:] if isinstance(meta, msgspec.Meta) and meta.max_length]
        if typing.get_origin(base) is list and limits:
            return f"an array of at most {limits[0]} {_plural(typing.get_args(base)[0])}"
        return _noun(base)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in args if arg not in (type(None), msgspec.UnsetType)]
        text = " or ".join(_noun(option) for option in options)
        return text + (" or null" if type(None) in args else "")
    if origin is typing.Literal:
        return "one of " + ", ".join(str(value) for value in args)
    if origin is list:
        return f"an array of {_plural(args[0])}"
    return _NOUNS.get(annotation, "a valid value")


def _plural(annotation: Any) -> str:
    noun = _noun(annotation)
    return _PLURALS.get(noun, "valid values")


_NOUNS: dict[Any, str] = {
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    datetime.datetime: "an RFC 3339 timestamp with an offset (e.g. 2026-12-01T09:00:00Z)",
}
_PLURALS = {"a string": "strings", "a boolean": "booleans", "an integer": "integers", "a number": "numbers"}


def _annotation_at(model: type[msgspec.Struct], field: str, *, depth: int) -> Any:
    """The declared type of `model.field`, or of an item `depth` lists down in it (`tags[3]`: depth 1)."""
    annotation = typing.get_type_hints(model, include_extras=True)[field]
    for _ in range(depth):
        annotation = _list_item(annotation)
    return annotation


def _list_item(annotation: Any) -> Any:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list:
        return args[0]
    if origin is Annotated:
        return _list_item(args[0])
    if origin in (typing.Union, types.UnionType):
        lists = [arg for arg in args if arg not in (type(None), msgspec.UnsetType)]
        if len(lists) == 1:
            return _list_item(lists[0])
    raise TypeError(f"{annotation!r} has no items")


def _details_from_litestar(extra: Any) -> list[ErrorDetail]:
    """Litestar's own validation errors (a body or parameter it could not bind) in this API's words.

    Its message is never passed on: the handlers declare every parameter as a string and read it
    themselves (api/listing.py), so what is left for Litestar is a value that is missing.
    """
    details: list[ErrorDetail] = []
    for item in extra if isinstance(extra, list) else []:
        if isinstance(item, dict):
            key = str(item.get("key") or "body")
            if key == "data":  # Litestar's name for a body it did not receive
                details.append(ErrorDetail("body", "required: send a JSON object"))
            elif str(item.get("message", "")).startswith("Missing required"):
                details.append(ErrorDetail(key, "required"))
            else:
                details.append(ErrorDetail(key, "is not valid"))
    return details or [ErrorDetail("body", "is not valid")]


EXCEPTION_HANDLERS = {
    ApiError: handle_api_error,
    HTTPException: handle_http_exception,
    Exception: handle_exception,
}
