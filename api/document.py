"""The OpenAPI document as served: Litestar's generated one, finished from the tables below.

Litestar derives paths, parameters and body schemas from the handlers; what a client generator and a
person also need is added here, for every operation alike (issue #14): stable operationIds, a
readable description of each operation and response, every status an operation can answer with, the
headers of each response, the formats of ids and timestamps, and an example of every body. It is
table-driven and strict: an operation or a status the tables do not know fails `finish` (and the app
with it, at start), so a new route cannot be served with a half-written document.
"""

from __future__ import annotations

import copy
from typing import Any

from .errors import ErrorBody

Document = dict[str, Any]

# --- operations ------------------------------------------------------------------------------------

_IF_MATCH = (" With `If-Match: <ETag>`, only while the task is still that version: otherwise 412, nothing changes, "
             "and the answer's `ETag` is the current version.")
# (method, path) -> (operationId, description). The /api/{user_id}/... twin of each /api operation gets
# the same id with "ByUserId" (toggle is spelled .../complete there).
OPERATIONS: dict[tuple[str, str], tuple[str, str]] = {
    ("get", "/api/tasks"): ("listTasks", (
        "One page of the caller's tasks, newest first unless `sort`/`order` say otherwise, with `total_count`, "
        "the number of tasks matching the filters (ignoring `limit`, `offset` and `cursor`). `next_cursor` "
        "(also in a `Link: <...>; rel=\"next\"` header) continues the same query after the last task of the "
        "page; it is null on the last page. The `ETag` changes whenever the page would: send it back in "
        "`If-None-Match` to get a 304 without a body while nothing changed.")),
    ("post", "/api/tasks"): ("createTask", (
        "Creates a task for the caller (the owner is the token's `sub`; a body cannot name another). "
        "`title` is stripped of surrounding white space, then must be 1 to 255 characters; `description` "
        "is at most 1,000 characters, and empty or white space only becomes null. A `recurrence` needs a "
        "`due_at`. The answer is the stored task, its address in `Location` and its version in `ETag`. With an "
        "`Idempotency-Key`, a retry of the same request within 24 hours answers the first 201 again instead of "
        "creating another task.")),
    ("delete", "/api/tasks"): ("clearCompletedTasks", (
        "Deletes every completed task of the caller and says how many. Only `completed=true` is accepted: "
        "this is the one bulk delete there is, and any other filter is a 400.")),
    ("get", "/api/tasks/{task_id}"): ("getTask", (
        "One of the caller's tasks. Another user's task is a 403 and a task that does not exist (or an id "
        "that is not a UUID) a 404; neither answer contains any of the other user's data. Send its `ETag` back "
        "in `If-None-Match` to get a 304 without a body while it has not changed.")),
    ("put", "/api/tasks/{task_id}"): ("replaceTask", (
        "Changes the fields sent and keeps the others, exactly as PATCH does: any non-empty subset of "
        "the fields of a create. Send `null` to clear `description`, `due_at` or `recurrence`. Completing a "
        "recurring task creates its next occurrence, named by `next_task_id`." + _IF_MATCH)),
    ("patch", "/api/tasks/{task_id}"): ("updateTask", (
        "Changes the fields sent and keeps the others: any non-empty subset of the fields of a create. "
        "Send `null` to clear `description`, `due_at` or `recurrence`. Completing a recurring task creates "
        "its next occurrence, named by `next_task_id`." + _IF_MATCH)),
    ("delete", "/api/tasks/{task_id}"): ("deleteTask", "Deletes one of the caller's tasks." + _IF_MATCH),
    ("patch", "/api/tasks/{task_id}/toggle"): ("toggleTask", (
        "Flips `completed` in one statement on the server, so two toggles at once flip it twice, never "
        "once. Completing a recurring task creates its next occurrence, named by `next_task_id`." + _IF_MATCH)),
    ("get", "/api/tags"): ("listTags", (
        "The caller's tags, compared ignoring case and spelled as on the oldest task carrying each, with the "
        "number of tasks carrying it; most used first, at most 1,000.")),
    ("get", "/health"): ("getHealth", "200 while the process runs; it does not look at the database. No token."),
    ("get", "/ready"): ("getReady", (
        "200 when the database answers, the schema is migrated and `taskapi_audit.findings()` reports no "
        "error; otherwise 503, and then every /api request answers 503 too. No token.")),
}
COMPAT_PREFIX = "/api/{user_id}"
COMPAT_RENAMED = {"/tasks/{task_id}/complete": "/tasks/{task_id}/toggle"}
COMPAT_NOTE = (" This is the `/api/{user_id}/...` twin of the `/api/...` operation, for frontends built on that "
               "convention: `{user_id}` must equal the token's `sub`, or the answer is 403 before any data is read.")

# --- responses -------------------------------------------------------------------------------------

# Every status an operation may answer with besides its success, as a person should read it.
ERRORS: dict[int, str] = {
    304: "Not modified: `If-None-Match` names the current version. No body; the current `ETag`.",
    400: ("The request is not valid (`validation_error`): `details` names each field and the rule it broke, "
          "e.g. `{\"field\": \"title\", \"message\": \"must be a string\"}`."),
    401: ("No token, or one that is not valid (`unauthorized`), with `WWW-Authenticate: Bearer` "
          "(`error=\"invalid_token\"` when a token was sent)."),
    403: "Another user's task, or a `{user_id}` path that is not the token's `sub` (`forbidden`). Nothing changed.",
    404: "No such task, or an id that is not a UUID (`not_found`).",
    405: "This method is not allowed on this path (`method_not_allowed`); `Allow` lists the methods that are.",
    408: "The body did not arrive within `HTTP_READ_TIMEOUT_S` seconds (`request_timeout`).",
    409: "A request with the same `Idempotency-Key` is still being processed (`idempotency_key_in_flight`).",
    412: "`If-Match` names no current version of the task (`precondition_failed`): nothing changed.",
    413: "The body is over 64 KiB (`payload_too_large`).",
    415: "The body is not `application/json` in UTF-8 (`unsupported_media_type`).",
    422: "The `Idempotency-Key` was used for a different request (`idempotency_key_reused`).",
    431: "The request line and headers are over 128 KiB (`headers_too_large`).",
    500: "Something failed that should not have (`internal_error`); the body never says what. Retrying may help.",
    503: ("The database is unreachable, busy or too slow, the JWKS cannot be fetched, or the isolation posture "
          "is broken (`service_unavailable` / `auth_unavailable`): retry after `Retry-After` seconds."),
}
# Every request can meet these, whatever the operation: the request's size is checked before routing,
# and any handler can fail.
ALWAYS = (431, 500)

# Descriptions of success responses, by operationId (the /api/{user_id} twins share them).
SUCCESS: dict[str, str] = {
    "listTasks": "One page of the caller's tasks.",
    "createTask": "The task as stored; `Location` is its address.",
    "clearCompletedTasks": "How many completed tasks were deleted (0 when there were none).",
    "getTask": "The task.",
    "replaceTask": "The task as changed.",
    "updateTask": "The task as changed.",
    "deleteTask": "The task is gone.",
    "toggleTask": "The task with `completed` flipped.",
    "listTags": "The caller's tags, most used first.",
    "getHealth": "The process is alive.",
    "getReady": "Ready to serve.",
}

# --- headers ---------------------------------------------------------------------------------------

REQUEST_ID_PATTERN = "^[A-Za-z0-9._:-]{1,128}$"
HEADERS: dict[str, Document] = {
    "X-Request-ID": {
        "description": "The request's id, as in the server's log: the client's own when sane, else a new one.",
        "required": True, "schema": {"type": "string", "pattern": REQUEST_ID_PATTERN},
        "example": "7d4f0c1e9a2b4c3d00000001"},
    "Location": {
        "description": "The new task's address, `/api/tasks/{id}` (also when created through `/api/{user_id}/tasks`).",
        "required": True, "schema": {"type": "string", "pattern": "^/api/tasks/[0-9a-f-]{36}$"},
        "example": "/api/tasks/5d0c6b8e-3f4a-4c6e-9d7a-3e2b1c0d9f8e"},
    "ETag": {
        "description": "A strong entity tag of what was answered: send it back in `If-Match` or `If-None-Match`.",
        "required": True, "schema": {"type": "string", "pattern": '^"[!#-~]+"$'},
        "example": '"6441b7f2c80e8"'},
    "Link": {
        "description": "`<...>; rel=\"next\"`: the URL of the next page, when there is one.",
        "required": False, "schema": {"type": "string"},
        "example": '</api/tasks?cursor=eyJ2IjoxfQ.c2lnbmF0dXJl&limit=2>; rel="next"'},
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "required": True, "schema": {"type": "string", "pattern": "^[0-9]+$"}, "example": "1"},
    "WWW-Authenticate": {
        "description": "`Bearer`, with `error=\"invalid_token\"` and a short reason when a token was sent (RFC 6750).",
        "required": True, "schema": {"type": "string", "pattern": "^Bearer"},
        "example": 'Bearer error="invalid_token", error_description="the token has expired"'},
    "Allow": {
        "description": "The methods this path allows.", "required": True, "schema": {"type": "string"},
        "example": "DELETE, GET, OPTIONS, POST"},
}
# Which headers come with which answer: by status for every operation, and by operationId for successes.
STATUS_HEADERS: dict[int, tuple[str, ...]] = {
    304: ("ETag",), 401: ("WWW-Authenticate",), 405: ("Allow",), 409: ("Retry-After",), 412: ("ETag",),
    503: ("Retry-After",),
}
SUCCESS_HEADERS: dict[str, tuple[str, ...]] = {
    "listTasks": ("ETag", "Link"),
    "createTask": ("Location", "ETag"),
    "getTask": ("ETag",),
    "replaceTask": ("ETag",),
    "updateTask": ("ETag",),
    "toggleTask": ("ETag",),
}

# --- parameters ------------------------------------------------------------------------------------

PATH_PARAMETERS: dict[str, Document] = {
    "task_id": {
        "description": "The task's id, a UUID. Any other string answers 404.",
        "schema": {"type": "string", "format": "uuid"},
        "example": "5d0c6b8e-3f4a-4c6e-9d7a-3e2b1c0d9f8e"},
    "user_id": {
        "description": "Must equal the token's `sub`, or the answer is 403 before any data is read.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
        "example": "alice"},
}

# --- examples --------------------------------------------------------------------------------------

TASK = {
    "id": "5d0c6b8e-3f4a-4c6e-9d7a-3e2b1c0d9f8e", "title": "Buy milk", "description": "2 litres, semi-skimmed",
    "completed": False, "user_id": "alice", "created_at": "2026-11-27T08:25:19.078522Z",
    "updated_at": "2026-11-27T08:25:19.078522Z", "due_at": "2026-12-01T08:00:00.000000Z", "priority": "high",
    "tags": ["groceries"], "recurrence": None, "next_task_id": None,
}
_RECURRING = {
    **TASK, "id": "0b7e2f6a-8c1d-4e5f-9a3b-7c6d5e4f3a2b", "title": "Water plants", "description": None,
    "completed": True, "due_at": "2026-12-01T08:00:00.000000Z", "priority": "medium", "tags": ["home"],
    "recurrence": "weekly", "next_task_id": "9f8e7d6c-5b4a-4321-8fed-cba987654321",
    "updated_at": "2026-11-28T18:02:44.120934Z",
}
# Examples of success bodies, by the schema they are an instance of.
SCHEMA_EXAMPLES: dict[str, Any] = {
    "Task": TASK,
    "TaskList": {"tasks": [TASK, _RECURRING], "total_count": 7,
                 "next_cursor": "eyJ2IjoxLCJzIjoiY3JlYXRlZF9hdCJ9.bS1zaWduYXR1cmU"},
    "Deleted": {"message": "Task deleted"},
    "Cleared": {"deleted": 3},
    "TagList": {"tags": [{"tag": "groceries", "count": 3}, {"tag": "home", "count": 1}]},
    "TagCount": {"tag": "groceries", "count": 3},
    "Status": {"status": "ok"},
    "ErrorDetail": {"field": "priority", "message": "must be one of high, medium, low"},
    "NotReadyBody": {"error": "service_unavailable",
                     "message": "the database's row-level security posture is broken: see SELECT * FROM "
                                "taskapi_audit.findings()", "checks": ["rls_disabled"]},
}
SUCCESS_EXAMPLES: dict[str, Any] = {"getReady": {"status": "ready"}, "toggleTask": _RECURRING}
# Request bodies, by operationId: each a named example, the first the one a "Try it out" starts from.
REQUEST_EXAMPLES: dict[str, dict[str, Document]] = {
    "createTask": {
        "minimal": {"summary": "Only a title", "value": {"title": "Buy milk"}},
        "full": {"summary": "Every field", "value": {
            "title": "Water plants", "description": "The ones on the balcony too", "completed": False,
            "due_at": "2026-12-01T09:00:00+01:00", "priority": "high", "tags": ["home", "weekly"],
            "recurrence": "weekly"}},
    },
    "updateTask": {
        "complete": {"summary": "Mark it done", "value": {"completed": True}},
        "rename": {"summary": "A new title and tags", "value": {"title": "Buy oat milk", "tags": ["groceries"]}},
        "clear": {"summary": "Clear the description and the due date",
                  "value": {"description": None, "due_at": None, "recurrence": None}},
    },
}
REQUEST_EXAMPLES["replaceTask"] = REQUEST_EXAMPLES["updateTask"]
# Error bodies, by status: what a client really gets.
ERROR_EXAMPLES: dict[int, Document] = {
    400: {"error": "validation_error", "message": "the request is not valid",
          "details": [{"field": "priority", "message": "must be one of high, medium, low"}]},
    401: {"error": "unauthorized", "message": "the token has expired"},
    403: {"error": "forbidden", "message": "this task belongs to another user"},
    404: {"error": "not_found", "message": "no such task"},
    405: {"error": "method_not_allowed", "message": "method not allowed"},
    408: {"error": "request_timeout", "message": "the request body did not arrive in time"},
    409: {"error": "idempotency_key_in_flight", "message": "a request with this Idempotency-Key is still running"},
    412: {"error": "precondition_failed", "message": "the task has changed since that version"},
    413: {"error": "payload_too_large", "message": "the request body is larger than 64 KiB"},
    415: {"error": "unsupported_media_type", "message": "the body must be application/json"},
    422: {"error": "idempotency_key_reused", "message": "this Idempotency-Key was used for another request"},
    431: {"error": "headers_too_large", "message": "the request line and headers are larger than 128 KiB"},
    500: {"error": "internal_error", "message": "internal error"},
    503: {"error": "service_unavailable", "message": "the database is busy, retry shortly"},
}

DESCRIPTION = """\
Personal tasks. Which tasks a caller sees and changes is decided by PostgreSQL row-level security,
not by this layer: every request runs as the user its token names.

**Authorize** with a JWT whose `sub` is the user id (`Authorization: Bearer <token>`): Better Auth's
`jwt` plugin issues them, and `taskapi dev` prints two. Every `/api` operation needs one.

**Errors** are always `{"error": code, "message": text}`, plus `details` (each `{"field", "message"}`)
for validation errors; the codes are stable. Besides the statuses listed under each operation, a path
answers **405** `method_not_allowed` (with `Allow`) to a method it does not have, and any request
may meet **431** (headers over 128 KiB) and **500**. Every response carries `X-Request-ID`.

The same task operations exist under `/api/{user_id}/...` for frontends built on that convention.
The full contract is docs/CONTRACT.md in the repository."""

TAGS = [
    {"name": "tasks", "description": "The caller's tasks and tags."},
    {"name": "tasks (by user id)", "description": (
        "The same operations under `/api/{user_id}/...`; `{user_id}` must be the token's `sub`.")},
    {"name": "operations", "description": "Liveness and readiness, for load balancers and orchestrators. No token."},
]


def finish(generated: Document) -> Document:
    """The served document: a copy of Litestar's `generated` one, completed from the tables above.

    Raises KeyError for an operation, a status or a schema the tables do not describe.
    """
    document = copy.deepcopy(generated)
    document["info"]["description"] = DESCRIPTION
    document["tags"] = TAGS
    components = document.setdefault("components", {})
    _finish_schemas(components["schemas"])
    components["responses"] = {"MethodNotAllowed": _error_response(405, {})}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if isinstance(operation, dict) and "responses" in operation:
                _finish_operation(path, method, operation)
    return document


def _finish_operation(path: str, method: str, operation: Document) -> None:
    compat = path.startswith(COMPAT_PREFIX + "/")
    base = path.removeprefix(COMPAT_PREFIX) if compat else path
    base = "/api" + COMPAT_RENAMED.get(base, base) if compat else base
    operation_id, description = OPERATIONS[(method, base)]
    operation["operationId"] = operation_id + ("ByUserId" if compat else "")
    operation["description"] = description + (COMPAT_NOTE if compat else "")
    for parameter in operation.get("parameters", []):
        if parameter["in"] == "path":
            parameter.update(copy.deepcopy(PATH_PARAMETERS[parameter["name"]]))
    if "requestBody" in operation:
        media = operation["requestBody"]["content"]["application/json"]
        media["examples"] = REQUEST_EXAMPLES[operation_id]
    responses: Document = operation["responses"]
    for status in ALWAYS:
        responses.setdefault(str(status), {})
    for key in list(responses):
        status = int(key)
        if status < 300:
            responses[key] = _success_response(operation_id, responses[key])
        else:
            responses[key] = _error_response(status, responses[key])


def _success_response(operation_id: str, response: Document) -> Document:
    headers = {name: _header(name) for name in ("X-Request-ID", *SUCCESS_HEADERS.get(operation_id, ()))}
    # A header a handler declares (response_headers=...) must be in the tables too: one description each.
    undescribed = set(response.get("headers") or {}) - set(headers)
    if undescribed:
        raise KeyError(f"{operation_id}: headers {sorted(undescribed)} are not in SUCCESS_HEADERS")
    finished: Document = {"description": SUCCESS[operation_id], "headers": headers}
    content = response.get("content")
    if content:
        media = content["application/json"]
        if media.get("schema") in (None, {}):  # /ready declares a union Litestar cannot name
            media["schema"] = {"$ref": "#/components/schemas/Status"}
        name = media["schema"]["$ref"].rsplit("/", 1)[1]
        media["example"] = SUCCESS_EXAMPLES.get(operation_id, SCHEMA_EXAMPLES[name])
        finished["content"] = content
    return finished


def _error_response(status: int, declared: Document) -> Document:
    """An error status: its description and headers, and its body.

    The body is an ErrorBody, described from ERRORS, unless the handler declared a body of its own (the
    503 of /ready): then its own description stays.
    """
    headers = {name: _header(name) for name in ("X-Request-ID", *STATUS_HEADERS.get(status, ()))}
    response: Document = {"description": ERRORS[status], "headers": headers}
    if status == 304:
        return response  # no body
    error_body = {"schema": {"$ref": f"#/components/schemas/{ErrorBody.__name__}"}}
    media = declared.get("content", {}).get("application/json") or error_body
    name = media["schema"]["$ref"].rsplit("/", 1)[1]
    if name == ErrorBody.__name__:
        media["example"] = ERROR_EXAMPLES[status]
    else:
        media["example"] = SCHEMA_EXAMPLES[name]
        response["description"] = declared["description"]
    response["content"] = {"application/json": media}
    return response


def _header(name: str) -> Document:
    """The header's description, written out in each response (KeyError for one HEADERS does not describe).

    Inline rather than a reference to components: a client reading one response needs nothing else.
    """
    return copy.deepcopy(HEADERS[name])


def _finish_schemas(schemas: Document) -> None:
    """An example on every schema of the components (KeyError for one the tables do not know)."""
    for name, schema in schemas.items():
        schema["example"] = ERROR_EXAMPLES[404] if name == ErrorBody.__name__ else SCHEMA_EXAMPLES[name]
