"""The task endpoints: request and response structs, each handler's SQL right above it.

Handlers stay thin: validate, run one statement as the caller (`Database.fetch_one`), return the
body PostgreSQL built. Which rows a caller may touch is decided by the policies in
sql/policies/tasks.sql, never here: a statement that matches no row means "not yours or not there",
and only then does `task_exists` tell the two apart (403 vs 404).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar

import msgspec
from litestar import Request, Response, delete, get, patch, post, put, route
from litestar.dto import MsgspecDTO
from litestar.enums import HttpMethod
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.spec import OpenAPIType, Schema
from litestar.params import Parameter

from .auth import current_caller
from .db import current_database
from .errors import Forbidden, NotFound, from_body_error, validation_error
from .openapi import error_responses
from .pipeline import Params, Row, Statement

TITLE_MAX = 255
DESCRIPTION_MAX = 1000
JSON = "application/json"

# The request rules as JSON Schema, for the OpenAPI document only (the handlers check them, with
# friendlier messages): a generated client, or schemathesis, must be able to tell a valid body from
# an invalid one. `_WS` is Python's white space (what `str.strip` removes), spelled out because `\s`
# differs between Python, ECMAScript and Rust regexes. A title is 1..255 characters once stripped.
_WS = "\\t\\n\\x0b\\x0c\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
TITLE_PATTERN = f"^[{_WS}]*[^{_WS}\\x00](?:[^\\x00]{{0,{TITLE_MAX - 2}}}[^{_WS}\\x00])?[{_WS}]*$"
NO_NUL_PATTERN = "^[^\\x00]*$"
_TITLE_SCHEMA = msgspec.Meta(extra_json_schema={"pattern": TITLE_PATTERN})
_DESCRIPTION_SCHEMA = msgspec.Meta(extra_json_schema={"pattern": NO_NUL_PATTERN, "maxLength": DESCRIPTION_MAX})


class Task(msgspec.Struct):
    """A task as the API returns it (CONTRACT.md section 2)."""

    id: uuid.UUID
    title: Annotated[str, msgspec.Meta(min_length=1, max_length=TITLE_MAX)]
    description: Annotated[str, msgspec.Meta(min_length=1, max_length=DESCRIPTION_MAX)] | None
    completed: bool
    user_id: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    created_at: Annotated[str, msgspec.Meta(extra_json_schema={"format": "date-time"})]
    updated_at: Annotated[str, msgspec.Meta(extra_json_schema={"format": "date-time"})]


class TaskList(msgspec.Struct):
    """One page of the caller's tasks, newest first, and how many match in all."""

    tasks: list[Task]
    total_count: Annotated[int, msgspec.Meta(ge=0)]


class Deleted(msgspec.Struct):
    message: str


class TaskCreate(msgspec.Struct, forbid_unknown_fields=True):
    """Body of POST: `title` is stripped, then 1..255 characters; a blank description is stored as null."""

    title: Annotated[str, _TITLE_SCHEMA]
    description: Annotated[str, _DESCRIPTION_SCHEMA] | None = None
    completed: bool = False


class TaskChange(msgspec.Struct, forbid_unknown_fields=True):
    """Body of PUT and PATCH: any non-empty subset of the fields of `TaskCreate`."""

    title: Annotated[str, _TITLE_SCHEMA] | msgspec.UnsetType = msgspec.UNSET
    description: Annotated[str, _DESCRIPTION_SCHEMA] | msgspec.UnsetType | None = msgspec.UNSET
    completed: bool | msgspec.UnsetType = msgspec.UNSET

    openapi_extra: ClassVar[dict[str, Any]] = {"minProperties": 1}


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
            raise from_body_error(exc) from None

    @classmethod
    def create_openapi_schema(cls, field_definition: Any, handler_id: str, schema_creator: Any) -> Schema:
        document = msgspec.json.schema(cls.model_type)
        schema = document["$defs"][document["$ref"].rsplit("/", 1)[1]]
        return _openapi_schema({**schema, **getattr(cls.model_type, "openapi_extra", {})})


_SCHEMA_KEYWORDS = {"pattern": "pattern", "maxLength": "max_length", "minLength": "min_length",
                    "default": "default", "title": "title", "description": "description",
                    "required": "required", "minProperties": "min_properties",
                    "additionalProperties": "additional_properties"}


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
        else:
            kwargs[_SCHEMA_KEYWORDS[keyword]] = value  # KeyError: a keyword this mapping must learn
    return Schema(**kwargs)


# --- list -------------------------------------------------------------------------------------------

# The caller's page of tasks and the count of every matching task, as one JSON document. With or
# without the `completed` filter, the rows come from tasks_user_created_idx via the policy's user_id.
LIST_TASKS = Statement("""
SELECT json_build_object(
    'tasks', coalesce(
        (SELECT json_agg(taskapi.task_json(page) ORDER BY page.created_at DESC, page.id DESC)
         FROM (SELECT * FROM taskapi.tasks
               WHERE %(completed)s::boolean IS NULL OR completed = %(completed)s::boolean
               ORDER BY created_at DESC, id DESC
               LIMIT %(limit)s OFFSET %(offset)s) AS page),
        '[]'::json),
    'total_count', (SELECT count(*) FROM taskapi.tasks
                    WHERE %(completed)s::boolean IS NULL OR completed = %(completed)s::boolean)
)::text
""")


@get("/tasks", summary="List my tasks", responses=error_responses(),
     description="Newest first (created_at, then id, descending). `total_count` ignores limit and offset.")
async def list_tasks(
    request: Request[Any, Any, Any],
    completed: Literal["true", "false"] | None = None,
    limit: Annotated[int, Parameter(ge=1, le=200)] = 50,
    offset: Annotated[int, Parameter(ge=0, le=2_147_483_647)] = 0,
) -> Response[TaskList]:
    flag = None if completed is None else completed == "true"
    row = await _fetch(request, LIST_TASKS, {"completed": flag, "limit": limit, "offset": offset})
    assert row is not None  # an aggregate always returns one row
    return _json(row[0])


# --- create -----------------------------------------------------------------------------------------

# user_id is not named: its column default is taskapi.current_user_id(), and the insert policy's
# WITH CHECK refuses any other value.
CREATE_TASK = Statement("""
INSERT INTO taskapi.tasks AS t (title, description, completed)
VALUES (%(title)s, %(description)s, %(completed)s)
RETURNING t.id, taskapi.task_json(t)::text
""")


@post("/tasks", summary="Create a task", status_code=201, opt={"json_body": True},
      dto=StrictBody[TaskCreate], return_dto=None,
      responses=error_responses(body=True))
async def create_task(request: Request[Any, Any, Any], data: TaskCreate) -> Response[Task]:
    values = {
        "title": _clean_title(data.title),
        "description": _clean_description(data.description),
        "completed": data.completed,
    }
    row = await _fetch(request, CREATE_TASK, values)
    assert row is not None  # RETURNING of an INSERT that did not raise
    task_id, body = row
    assert task_id is not None and body is not None
    return _json(body, status_code=201, headers={"Location": f"/api/tasks/{task_id.decode()}"})


# --- read one ---------------------------------------------------------------------------------------

GET_TASK = Statement("SELECT taskapi.task_json(t)::text FROM taskapi.tasks AS t WHERE t.id = %(id)s")


@get("/tasks/{task_id:str}", summary="Get one of my tasks", responses=error_responses())
async def get_task(request: Request[Any, Any, Any], task_id: str) -> Response[Task]:
    return await _one_task(request, GET_TASK, task_id, {})


# --- change -----------------------------------------------------------------------------------------

# Fields not sent keep their value; description may be set to null, so it has its own flag.
UPDATE_TASK = Statement("""
UPDATE taskapi.tasks AS t SET
    title = coalesce(%(title)s, t.title),
    description = CASE WHEN %(set_description)s THEN %(description)s ELSE t.description END,
    completed = coalesce(%(completed)s, t.completed)
WHERE t.id = %(id)s
RETURNING taskapi.task_json(t)::text
""")


async def _change_task(request: Request[Any, Any, Any], task_id: str, data: TaskChange) -> Response[Task]:
    if data.title is msgspec.UNSET and data.description is msgspec.UNSET and data.completed is msgspec.UNSET:
        raise validation_error("body", "send at least one of title, description, completed")
    values = {
        "title": None if data.title is msgspec.UNSET else _clean_title(data.title),
        "set_description": data.description is not msgspec.UNSET,
        "description": None if data.description is msgspec.UNSET else _clean_description(data.description),
        "completed": None if data.completed is msgspec.UNSET else data.completed,
    }
    return await _one_task(request, UPDATE_TASK, task_id, values)


@put("/tasks/{task_id:str}", summary="Change one of my tasks", opt={"json_body": True},
     dto=StrictBody[TaskChange], return_dto=None,
     responses=error_responses(body=True))
async def put_task(request: Request[Any, Any, Any], task_id: str, data: TaskChange) -> Response[Task]:
    return await _change_task(request, task_id, data)


@patch("/tasks/{task_id:str}", summary="Change one of my tasks", opt={"json_body": True},
       dto=StrictBody[TaskChange], return_dto=None,
       responses=error_responses(body=True))
async def patch_task(request: Request[Any, Any, Any], task_id: str, data: TaskChange) -> Response[Task]:
    return await _change_task(request, task_id, data)


# Flips `completed` in one statement, so two concurrent toggles give two flips, never one.
TOGGLE_TASK = Statement("""
UPDATE taskapi.tasks AS t SET completed = NOT t.completed
WHERE t.id = %(id)s
RETURNING taskapi.task_json(t)::text
""")


@patch("/tasks/{task_id:str}/toggle", summary="Flip completed on one of my tasks",
       responses=error_responses())
async def toggle_task(request: Request[Any, Any, Any], task_id: str) -> Response[Task]:
    return await _one_task(request, TOGGLE_TASK, task_id, {})


# --- delete -----------------------------------------------------------------------------------------

DELETE_TASK = Statement("DELETE FROM taskapi.tasks WHERE id = %(id)s RETURNING '{\"message\": \"Task deleted\"}'")


@delete("/tasks/{task_id:str}", summary="Delete one of my tasks", status_code=200,
        responses=error_responses())
async def delete_task(request: Request[Any, Any, Any], task_id: str) -> Response[Deleted]:
    return await _one_task(request, DELETE_TASK, task_id, {})


# --- routers ----------------------------------------------------------------------------------------

def _options(path: str, allow: str) -> HTTPRouteHandler:
    """OPTIONS for a path that several handlers share.

    Litestar's automatic OPTIONS handler answers with the methods of the route it was made for,
    which is the path's first handler only (`Allow: GET, OPTIONS` on /api/tasks); schemathesis found it.
    """

    @route(path, http_method=[HttpMethod.OPTIONS], include_in_schema=False, status_code=204)
    async def options() -> Response[None]:
        return Response(None, status_code=204, headers={"Allow": allow})

    return options


def _shared_path_options() -> list[HTTPRouteHandler]:
    return [_options("/tasks", "GET, OPTIONS, POST"),
            _options("/tasks/{task_id:str}", "DELETE, GET, OPTIONS, PATCH, PUT")]


# The OPTIONS handlers come first: registered after another handler, they lose to the automatic one.
HANDLERS = [*_shared_path_options(), list_tasks, create_task, get_task, put_task, patch_task, toggle_task,
            delete_task]


def compat_handlers() -> list[Any]:
    """The /api/{user_id}/... paths: same handlers; the gate (`app.request_gate`) checks {user_id} first.

    Toggle is spelled .../complete there (the convention those frontends use).
    """
    return [*_shared_path_options(), list_tasks, create_task, get_task, put_task, patch_task, delete_task,
            patch("/tasks/{task_id:str}/complete", summary="Flip completed on one of my tasks",
                  responses=error_responses())(toggle_task.fn)]


# --- helpers ----------------------------------------------------------------------------------------

# The one deliberate look past RLS (see sql/migrations/0001_tasks.sql): 403 versus 404. It needs no
# identity and returns no row data.
TASK_EXISTS = Statement("SELECT taskapi.task_exists(%(id)s)")


async def _one_task(request: Request[Any, Any, Any], statement: Statement, task_id: str,
                    values: dict[str, Any]) -> Response[Any]:
    """Run a single-task statement; no row means 403 (exists, not yours) or 404 (no such task)."""
    tid = _task_id(task_id)
    row = await _fetch(request, statement, {**values, "id": tid})
    if row is None:
        if await current_database(request).fetch_one(None, TASK_EXISTS, {"id": tid}) == (b"t",):
            raise Forbidden("this task belongs to another user")
        raise NotFound("no such task")
    return _json(row[0])


async def _fetch(request: Request[Any, Any, Any], statement: Statement, params: Params) -> Row | None:
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


def _json(body: bytes | None, *, status_code: int = 200, headers: dict[str, str] | None = None) -> Response[Any]:
    """The JSON PostgreSQL built, passed on as it came."""
    assert body is not None  # every statement above returns a non-null JSON text
    return Response(body, status_code=status_code, media_type=JSON, headers=headers)
