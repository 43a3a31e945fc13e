"""The task endpoints: request and response structs, each handler's SQL right above it.

Handlers stay thin: validate, run one statement as the caller (`Database.fetch_one`), return the
body PostgreSQL built. Which rows a caller may touch is decided by the policies in
sql/policies/tasks.sql, never here: a statement that matches no row means "not yours or not there",
and only then does `task_exists` tell the two apart (403 vs 404).

Every write takes If-Match (issue #12) as a condition of its own statement, so no other write can slip
between the check and the change; when it matches no row, one read tells a stale version (412) from
another user's task (403) and no task (404), in that order of precedence: 403 and 404 first.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Annotated, Any, ClassVar, Generic, Literal, LiteralString, TypeVar

import msgspec
from litestar import Request, Response, delete, get, patch, post, put
from litestar.dto import MsgspecDTO
from litestar.openapi.spec import OpenAPIType, Schema

from .auth import current_caller
from .db import current_database
from .errors import (
    Forbidden,
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    NotFound,
    PreconditionFailed,
    from_body_error,
    validation_error,
)
from .idempotency import CREATE_TASK_ONCE, idempotency_key, request_hash
from .openapi import (
    error_responses,
    etag_header,
    idempotency_key_parameter,
    if_match_parameter,
    if_none_match_parameter,
    location_header,
)
from .pipeline import Params, Row, Statement
from .preconditions import if_match_tags, none_match, not_modified

TITLE_MAX = 255
DESCRIPTION_MAX = 1000
JSON = "application/json"

# The request rules as JSON Schema, for the OpenAPI document only (the handlers check them, with
# friendlier messages): a generated client, or schemathesis, must be able to tell a valid body from
# an invalid one. `WS` is Python's white space (what `str.strip` removes), spelled out because `\s`
# differs between Python, ECMAScript and Rust regexes. A title is 1..255 characters once stripped.
WS = "\\t\\n\\x0b\\x0c\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"


def stripped_text_pattern(max_length: int) -> str:
    """The rule "1..max_length characters once stripped, no NUL" as a regular expression."""
    return f"^[{WS}]*[^{WS}\\x00](?:[^\\x00]{{0,{max_length - 2}}}[^{WS}\\x00])?[{WS}]*$"


TITLE_PATTERN = stripped_text_pattern(TITLE_MAX)
NO_NUL_PATTERN = "^[^\\x00]*$"
# Each rule also in words, next to its pattern: people read the description, machines the pattern.
_TITLE_SCHEMA = msgspec.Meta(
    description=f"1 to {TITLE_MAX} characters once leading and trailing white space is stripped (it is stored "
                "stripped), without the NUL character.",
    extra_json_schema={"pattern": TITLE_PATTERN})
_DESCRIPTION_SCHEMA = msgspec.Meta(
    description=f"At most {DESCRIPTION_MAX:,} characters, without the NUL character; empty or white space only is "
                "stored as null.",
    extra_json_schema={"pattern": NO_NUL_PATTERN, "maxLength": DESCRIPTION_MAX})


TAG_MAX = 50
TAGS_MAX = 20
PRIORITIES: dict[str, int] = {"low": 1, "medium": 2, "high": 3}  # as stored (sql/migrations/0004)
Priority = Literal["high", "medium", "low"]
Recurrence = Literal["daily", "weekly", "monthly"]
_TAG_SCHEMA = msgspec.Meta(
    description=f"1 to {TAG_MAX} characters once stripped, without the NUL character.",
    extra_json_schema={"pattern": stripped_text_pattern(TAG_MAX)})
_TAGS_SCHEMA = msgspec.Meta(max_length=TAGS_MAX)
_TAGS_REQUEST = msgspec.Meta(
    max_length=TAGS_MAX,
    description=f"At most {TAGS_MAX}. Tags compare ignoring case: one repeated (`[\"Milk\", \"milk\"]`) is kept once, "
                "as first written.")
_PRIORITY = msgspec.Meta(description="`high`, `medium` (the default) or `low`.")
_RECURRENCE = msgspec.Meta(
    description="`daily`, `weekly` or `monthly` (computed in UTC), or null; needs a `due_at`. Completing the task "
                "creates its next occurrence, due one period later.")
# An RFC 3339 timestamp with an offset (`Z` or `+02:00`): a due date without one would mean different
# instants to different clients. Years 1000..2999, so that no offset moves one out of what PostgreSQL
# and Python both print the same way.
DUE_YEARS = (1000, 2999)
DUE_AT_PATTERN = "^[12][0-9]{3}-"
_DUE_AT = msgspec.Meta(
    tz=True, description=f"An RFC 3339 timestamp with an offset (`Z` or `+01:00`), years {DUE_YEARS[0]} to "
                         f"{DUE_YEARS[1]}; returned in UTC. Null clears it.",
    extra_json_schema={"format": "date-time", "pattern": DUE_AT_PATTERN})
_SET_BY_SERVER = "Set by the server; RFC 3339 in UTC."


class Task(msgspec.Struct):
    """A task as the API returns it (CONTRACT.md section 2).

    For the OpenAPI document only: the handlers pass on the JSON PostgreSQL builds (taskapi.task_json).
    """

    id: uuid.UUID
    title: Annotated[str, msgspec.Meta(min_length=1, max_length=TITLE_MAX, description="Stripped.")]
    description: Annotated[str, msgspec.Meta(min_length=1, max_length=DESCRIPTION_MAX)] | None
    completed: bool
    user_id: Annotated[str, msgspec.Meta(min_length=1, max_length=255,
                                         description="The owner: the `sub` of the token that created it.")]
    created_at: Annotated[datetime.datetime, msgspec.Meta(description=_SET_BY_SERVER)]
    updated_at: Annotated[datetime.datetime, msgspec.Meta(description=_SET_BY_SERVER + " Changes on every update.")]
    due_at: Annotated[datetime.datetime, msgspec.Meta(description="RFC 3339 in UTC.")] | None
    priority: Priority
    tags: Annotated[list[Annotated[str, msgspec.Meta(min_length=1, max_length=TAG_MAX)]], _TAGS_SCHEMA]
    recurrence: Recurrence | None
    next_task_id: Annotated[uuid.UUID, msgspec.Meta(
        description="The next occurrence of a recurring task, once this one was completed.")] | None


class Deleted(msgspec.Struct):
    message: str


class TaskCreate(msgspec.Struct, forbid_unknown_fields=True):
    """Body of POST: `title` is stripped, then 1..255 characters; a blank description is stored as null.

    A `recurrence` needs a `due_at` to advance from.
    """

    title: Annotated[str, _TITLE_SCHEMA]
    description: Annotated[str, _DESCRIPTION_SCHEMA] | None = None
    completed: bool = False
    due_at: Annotated[datetime.datetime, _DUE_AT] | None = None
    priority: Annotated[Priority, _PRIORITY] = "medium"
    tags: Annotated[list[Annotated[str, _TAG_SCHEMA]], _TAGS_REQUEST] = msgspec.field(default_factory=list)
    recurrence: Annotated[Recurrence, _RECURRENCE] | None = None

    # JSON Schema for the rule above, for the OpenAPI document.
    openapi_extra: ClassVar[dict[str, Any]] = {
        "if": {"properties": {"recurrence": {"type": "string"}}, "required": ["recurrence"]},
        "then": {"properties": {"due_at": {"type": "string"}}, "required": ["due_at"]},
    }


class TaskChange(msgspec.Struct, forbid_unknown_fields=True):
    """Body of PUT and PATCH: any non-empty subset of the fields of `TaskCreate`."""

    title: Annotated[str, _TITLE_SCHEMA] | msgspec.UnsetType = msgspec.UNSET
    description: Annotated[str, _DESCRIPTION_SCHEMA] | msgspec.UnsetType | None = msgspec.UNSET
    completed: bool | msgspec.UnsetType = msgspec.UNSET
    due_at: Annotated[datetime.datetime, _DUE_AT] | msgspec.UnsetType | None = msgspec.UNSET
    priority: Annotated[Priority, _PRIORITY] | msgspec.UnsetType = msgspec.UNSET
    tags: Annotated[list[Annotated[str, _TAG_SCHEMA]], _TAGS_REQUEST] | msgspec.UnsetType = msgspec.UNSET
    recurrence: Annotated[Recurrence, _RECURRENCE] | msgspec.UnsetType | None = msgspec.UNSET

    openapi_extra: ClassVar[dict[str, Any]] = {"minProperties": 1}


# Fields of a task that the server sets: a body that sends one is told so, not "unknown field".
READ_ONLY_FIELDS = frozenset(Task.__struct_fields__) - frozenset(TaskCreate.__struct_fields__)

# The conditional and retry request headers, declared for the OpenAPI document; the handlers read them
# with api/preconditions.py and api/idempotency.py, which parse them strictly.
IfMatchHeader = Annotated[str | None, if_match_parameter()]
IfNoneMatchHeader = Annotated[str | None, if_none_match_parameter()]
IdempotencyKeyHeader = Annotated[str | None, idempotency_key_parameter()]

BodyT = TypeVar("BodyT", bound=msgspec.Struct)


class StrictBody(MsgspecDTO[BodyT], Generic[BodyT]):
    """Request bodies decoded strictly: `"true"` is not a boolean, `1` is not a string.

    Litestar's own body conversion is lenient (CONTRACT.md section 2 wants any value of the wrong JSON
    type refused), so bodies are decoded here, once, straight into the struct. The OpenAPI schema is
    msgspec's for the struct, which keeps what Litestar's drops: `additionalProperties: false` and
    the patterns above.
    """

    def decode_bytes(self, value: bytes) -> Any:
        try:
            return msgspec.json.decode(value, type=self.model_type, strict=True)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise from_body_error(exc, self.model_type, read_only=READ_ONLY_FIELDS) from None

    @classmethod
    def create_openapi_schema(cls, field_definition: Any, handler_id: str, schema_creator: Any) -> Schema:
        document = msgspec.json.schema(cls.model_type)
        schema = document["$defs"][document["$ref"].rsplit("/", 1)[1]]
        return _openapi_schema({**schema, **getattr(cls.model_type, "openapi_extra", {})})


_SCHEMA_KEYWORDS = {"pattern": "pattern", "maxLength": "max_length", "minLength": "min_length",
                    "default": "default", "title": "title", "description": "description",
                    "required": "required", "minProperties": "min_properties",
                    "additionalProperties": "additional_properties", "enum": "enum", "format": "format",
                    "maxItems": "max_items", "minItems": "min_items"}


def _openapi_schema(json_schema: dict[str, Any]) -> Schema:
    """msgspec's JSON Schema of a request struct as Litestar's OpenAPI `Schema` (the keywords it uses)."""
    kwargs: dict[str, Any] = {}
    for keyword, value in json_schema.items():
        if keyword == "type":
            kwargs["type"] = OpenAPIType(value)
        elif keyword == "properties":
            kwargs["properties"] = {name: _openapi_schema(sub) for name, sub in value.items()}
        elif keyword == "anyOf":
            kwargs["any_of"] = [_openapi_schema(sub) for sub in value]
        elif keyword in ("items", "if", "then"):
            kwargs[{"items": "items", "if": "schema_if", "then": "then"}[keyword]] = _openapi_schema(value)
        else:
            kwargs[_SCHEMA_KEYWORDS[keyword]] = value  # KeyError: a keyword this mapping must learn
    return Schema(**kwargs)


# --- create -----------------------------------------------------------------------------------------

# user_id is not named: its column default is taskapi.current_user_id(), and the insert policy's
# WITH CHECK refuses any other value.
CREATE_TASK = Statement("""
INSERT INTO taskapi.tasks AS t (title, description, completed, due_at, priority, tags, recurrence)
VALUES (%(title)s, %(description)s, %(completed)s, %(due_at)s::timestamptz, %(priority)s::smallint,
        %(tags)s::text[], %(recurrence)s)
RETURNING t.id, taskapi.task_json(t)::text, taskapi.task_etag(t)
""")


@post("/tasks", summary="Create a task", status_code=201, opt={"json_body": True},
      dto=StrictBody[TaskCreate], return_dto=None, response_headers=[location_header(), etag_header()],
      responses=error_responses(body=True, idempotency_key=True))
async def create_task(request: Request[Any, Any, Any], data: TaskCreate,
                      idempotency_key_header: IdempotencyKeyHeader = None) -> Response[Task]:
    if data.recurrence is not None and data.due_at is None:
        raise validation_error("recurrence", "a recurring task needs a due_at")
    values = {
        "title": _clean_title(data.title),
        "description": _clean_description(data.description),
        "completed": data.completed,
        "due_at": _clean_due_at(data.due_at),
        "priority": PRIORITIES[data.priority],
        "tags": _clean_tags(data.tags),
        "recurrence": data.recurrence,
    }
    key = idempotency_key(request)
    if key is None:
        row = await fetch(request, CREATE_TASK, values)
        assert row is not None  # RETURNING of an INSERT that did not raise
        task_id, body, etag = row
    else:
        # A replay is the recorded 201, byte for byte: same id, Location, body and ETag.
        row = await fetch(request, CREATE_TASK_ONCE, {**values, "key": key, "request_hash": request_hash(values)})
        assert row is not None  # the function returns one row on every path
        outcome, task_id, body, etag = row
        if outcome == b"in_flight":
            raise IdempotencyKeyInFlight("a request with this Idempotency-Key is still in progress; retry shortly")
        if outcome == b"mismatch":
            raise IdempotencyKeyReused("this Idempotency-Key was used for a different request in the last 24 hours")
    assert task_id is not None and etag is not None
    return json_response(body, status_code=201,
                         headers={"Location": f"/api/tasks/{task_id.decode()}", "ETag": etag.decode()})


# --- read one ---------------------------------------------------------------------------------------

GET_TASK = Statement("""
SELECT taskapi.task_json(t)::text, taskapi.task_etag(t) FROM taskapi.tasks AS t WHERE t.id = %(id)s
""")


@get("/tasks/{task_id:str}", summary="Get one of my tasks", response_headers=[etag_header()],
     responses=error_responses(not_modified=True))
async def get_task(request: Request[Any, Any, Any], task_id: str,
                   if_none_match_header: IfNoneMatchHeader = None) -> Response[Task]:
    body, etag = await _one_task(request, GET_TASK, task_id, {}, if_match=None)
    assert etag is not None
    if not none_match(request, etag):
        return not_modified(etag)
    return _task_response(body, etag)


# --- change -----------------------------------------------------------------------------------------

# The row a single-task write may change: this id and, when the request sent If-Match, only at a version
# it names. The check is a condition of the write's own statement, so no other write slips between.
_THIS_VERSION: LiteralString = (
    "WHERE t.id = %(id)s AND (%(if_match)s::text[] IS NULL OR taskapi.task_etag(t) = ANY (%(if_match)s::text[]))\n")

# Fields not sent keep their value; those that may be set to null have their own flag. Completing a
# recurring task creates its next occurrence (the tasks_spawn_next_occurrence trigger), whose id the
# task's next_task_id then carries.
UPDATE_TASK = Statement("""
UPDATE taskapi.tasks AS t SET
    title = coalesce(%(title)s, t.title),
    description = CASE WHEN %(set_description)s THEN %(description)s ELSE t.description END,
    completed = coalesce(%(completed)s, t.completed),
    due_at = CASE WHEN %(set_due_at)s THEN %(due_at)s::timestamptz ELSE t.due_at END,
    priority = coalesce(%(priority)s::smallint, t.priority),
    tags = coalesce(%(tags)s::text[], t.tags),
    recurrence = CASE WHEN %(set_recurrence)s THEN %(recurrence)s ELSE t.recurrence END
""" + _THIS_VERSION + """RETURNING taskapi.task_json(t)::text, taskapi.task_etag(t)
""")


async def _change_task(request: Request[Any, Any, Any], task_id: str, data: TaskChange) -> Response[Task]:
    sent = {name for name in data.__struct_fields__ if getattr(data, name) is not msgspec.UNSET}
    if not sent:
        raise validation_error("body", f"send at least one of {', '.join(data.__struct_fields__)}")
    if data.recurrence not in (None, msgspec.UNSET) and data.due_at is None:
        raise validation_error("recurrence", "a recurring task needs a due_at")
    values = {
        "title": None if data.title is msgspec.UNSET else _clean_title(data.title),
        "set_description": "description" in sent,
        "description": None if data.description is msgspec.UNSET else _clean_description(data.description),
        "completed": None if data.completed is msgspec.UNSET else data.completed,
        "set_due_at": "due_at" in sent,
        "due_at": None if data.due_at is msgspec.UNSET else _clean_due_at(data.due_at),
        "priority": None if data.priority is msgspec.UNSET else PRIORITIES[data.priority],
        "tags": None if data.tags is msgspec.UNSET else _clean_tags(data.tags),
        "set_recurrence": "recurrence" in sent,
        "recurrence": None if data.recurrence is msgspec.UNSET else data.recurrence,
    }
    return _task_response(*await _one_task(request, UPDATE_TASK, task_id, values, if_match=if_match_tags(request)))


@put("/tasks/{task_id:str}", summary="Change one of my tasks", opt={"json_body": True},
     dto=StrictBody[TaskChange], return_dto=None, response_headers=[etag_header()],
     responses=error_responses(body=True, if_match=True))
async def put_task(request: Request[Any, Any, Any], task_id: str, data: TaskChange,
                   if_match_header: IfMatchHeader = None) -> Response[Task]:
    return await _change_task(request, task_id, data)


@patch("/tasks/{task_id:str}", summary="Change one of my tasks", opt={"json_body": True},
       dto=StrictBody[TaskChange], return_dto=None, response_headers=[etag_header()],
       responses=error_responses(body=True, if_match=True))
async def patch_task(request: Request[Any, Any, Any], task_id: str, data: TaskChange,
                     if_match_header: IfMatchHeader = None) -> Response[Task]:
    return await _change_task(request, task_id, data)


# Flips `completed` in one statement, so two concurrent toggles give two flips, never one.
TOGGLE_TASK = Statement("""
UPDATE taskapi.tasks AS t SET completed = NOT t.completed
""" + _THIS_VERSION + """RETURNING taskapi.task_json(t)::text, taskapi.task_etag(t)
""")


@patch("/tasks/{task_id:str}/toggle", summary="Flip completed on one of my tasks",
       response_headers=[etag_header()], responses=error_responses(if_match=True))
async def toggle_task(request: Request[Any, Any, Any], task_id: str,
                      if_match_header: IfMatchHeader = None) -> Response[Task]:
    return _task_response(*await _one_task(request, TOGGLE_TASK, task_id, {}, if_match=if_match_tags(request)))


# --- delete -----------------------------------------------------------------------------------------

DELETE_TASK = Statement("""
DELETE FROM taskapi.tasks AS t
""" + _THIS_VERSION + """RETURNING '{"message": "Task deleted"}', NULL::text
""")


@delete("/tasks/{task_id:str}", summary="Delete one of my tasks", status_code=200,
        responses=error_responses(if_match=True))
async def delete_task(request: Request[Any, Any, Any], task_id: str,
                      if_match_header: IfMatchHeader = None) -> Response[Deleted]:
    body, _ = await _one_task(request, DELETE_TASK, task_id, {}, if_match=if_match_tags(request))
    return json_response(body)


# --- helpers ----------------------------------------------------------------------------------------

# Why a single-task statement matched no row, as the caller: the task's current version when the caller
# can see it (then only If-Match stopped the write: 412), else whether the id exists at all, through
# the one deliberate look past RLS (sql/migrations/0001_tasks.sql), which returns no row data: 403 or 404.
TASK_STATE = Statement("""
SELECT (SELECT taskapi.task_etag(t) FROM taskapi.tasks AS t WHERE t.id = %(id)s), taskapi.task_exists(%(id)s)
""")


async def _one_task(request: Request[Any, Any, Any], statement: Statement, task_id: str,
                    values: dict[str, Any], *, if_match: list[str] | None) -> tuple[bytes | None, str | None]:
    """Run a single-task statement returning (body, ETag) under `if_match`; return them as sent.

    No row raises 403 (exists, not yours), 404 (no such task) or, for the caller's own task whose
    version `if_match` does not name, 412 with the current ETag.
    """
    tid = _task_id(task_id)
    row = await fetch(request, statement, {**values, "id": tid, "if_match": if_match})
    if row is None:
        state = await fetch(request, TASK_STATE, {"id": tid})
        assert state is not None  # a select without FROM: one row
        current, exists = state
        if current is not None and if_match is not None:
            raise PreconditionFailed("the task has changed since this version: read it again, then retry with its "
                                     "ETag", etag=current.decode())
        if exists == b"t":
            raise Forbidden("this task belongs to another user")
        raise NotFound("no such task")
    body, etag = row
    return body, None if etag is None else etag.decode()


def _task_response(body: bytes | None, etag: str | None) -> Response[Any]:
    assert etag is not None  # every statement returning a task returns its ETag
    return json_response(body, headers={"ETag": etag})


async def fetch(request: Request[Any, Any, Any], statement: Statement, params: Params) -> Row | None:
    """Run `statement` as the request's caller, whom the gate (`app.request_gate`) verified."""
    return await current_database(request).fetch_one(current_caller(request).id, statement, params)


def _task_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise NotFound("no such task") from None


def _clean_title(title: str) -> str:
    stripped = title.strip()
    if not stripped:
        raise validation_error("title", "must not be empty or white space only")
    if len(stripped) > TITLE_MAX:
        raise validation_error("title", f"must be at most {TITLE_MAX} characters")
    if "\x00" in stripped:
        raise validation_error("title", "must not contain the NUL character")
    return stripped


def _clean_description(description: str | None) -> str | None:
    # The limit applies to what was sent, blank or not, as the published schema says (maxLength).
    if description is not None and len(description) > DESCRIPTION_MAX:
        raise validation_error("description", f"must be at most {DESCRIPTION_MAX} characters")
    if description is None or not description.strip():
        return None
    if "\x00" in description:
        raise validation_error("description", "must not contain the NUL character")
    return description


def _clean_tags(tags: list[str]) -> list[str]:
    """Each tag stripped, then 1..50 characters without NUL; at most 20.

    Tags compare ignoring case, so a repeat (`["Milk", "milk"]`) is the same tag: it is kept once, as
    first written, rather than refused.
    """
    if len(tags) > TAGS_MAX:
        raise validation_error("tags", f"at most {TAGS_MAX} tags")
    cleaned: dict[str, str] = {}
    for index, tag in enumerate(tags):
        stripped = tag.strip()
        where = f"tags[{index}]"
        if not stripped:
            raise validation_error(where, "must not be empty or white space only")
        if len(stripped) > TAG_MAX:
            raise validation_error(where, f"must be at most {TAG_MAX} characters once stripped")
        if "\x00" in stripped:
            raise validation_error(where, "must not contain the NUL character")
        cleaned.setdefault(stripped.lower(), stripped)
    return list(cleaned.values())


def _clean_due_at(due_at: datetime.datetime | None) -> datetime.datetime | None:
    """The due date in UTC: RFC 3339 allows offsets up to ±23:59, PostgreSQL's timestamptz input ±15:59."""
    if due_at is None:
        return None
    if not DUE_YEARS[0] <= due_at.year <= DUE_YEARS[1]:
        raise validation_error("due_at", f"the year must be from {DUE_YEARS[0]} to {DUE_YEARS[1]}")
    return due_at.astimezone(datetime.UTC)


def json_response(body: bytes | None, *, status_code: int = 200,
                  headers: dict[str, str] | None = None) -> Response[Any]:
    """The JSON PostgreSQL built, passed on as it came."""
    assert body is not None  # every statement above returns a non-null JSON text
    return Response(body, status_code=status_code, media_type=JSON, headers=headers)
