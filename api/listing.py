"""Listing the caller's tasks: filters, sort orders, keyset cursors and counts; bulk clear; tags.

A list request is one statement built from fixed SQL fragments for its sort order and the filters it
uses (`list_statement`): the page comes from the index of its sort order (sql/migrations/0004), read
from a keyset cursor's position with a row comparison `(key, id) < (...)`, so a page 40,000 tasks deep
costs what the first page costs. `total_count` comes from the caller's row of taskapi.task_counts
when the only filter is `completed` (no scan at all), and from counting the matches otherwise.

Every condition of a statement is leakproof except the `q` search, so row-level security lets the
sort order's index serve them. The search is a filter on the caller's rows only: a word that occurs in
millions of other users' tasks costs a user with 20 tasks 20 comparisons (issue #13).

The cursor is opaque to clients: base64url of the sort order, the filters and the last row's key,
with a checksum, so a cursor that was edited, truncated or made for another query is a 400. It is
not a secret and needs none: whatever it says, row-level security bounds the page to the caller's own
tasks, so another user's cursor, or a forged one, shows only your own.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Annotated, Any, LiteralString

import msgspec
from litestar import Request, Response, delete, get
from litestar.params import Parameter

from .auth import current_caller
from .errors import validation_error
from .openapi import error_responses, link_header, list_etag_header
from .pipeline import Statement
from .preconditions import body_etag, none_match, not_modified
from .tasks import (
    DUE_AT_PATTERN,
    DUE_YEARS,
    PRIORITIES,
    TAG_MAX,
    TAGS_MAX,
    WS,
    IfNoneMatchHeader,
    Task,
    fetch,
    json_response,
    stripped_text_pattern,
)

LIMIT_DEFAULT = 50
LIMIT_MAX = 200
# `offset` stays for v1 clients; past this, a page costs more than a client should be able to ask
# for, and `cursor` does the same job at any depth.
OFFSET_MAX = 10_000
Q_MAX = 200
Q_WORDS_MAX = 20
SORTS = ("created_at", "updated_at", "due_at", "priority", "title")
ORDERS = ("desc", "asc")
CURSOR_VERSION = 1
_CHECKSUM_PERSON = b"taskapi cursor"


class TaskList(msgspec.Struct):
    """One page of the caller's tasks, how many match in all, and where the next page starts."""

    tasks: list[Task]
    total_count: Annotated[int, msgspec.Meta(ge=0)]
    next_cursor: str | None


class Cleared(msgspec.Struct):
    deleted: Annotated[int, msgspec.Meta(ge=0)]


class TagCount(msgspec.Struct):
    tag: str
    count: Annotated[int, msgspec.Meta(ge=1)]


class TagList(msgspec.Struct):
    tags: list[TagCount]


@dataclass(frozen=True, slots=True)
class Filters:
    """What a list request selects, in one canonical form (the cursor carries it)."""

    completed: bool | None = None
    q: tuple[str, ...] = ()
    priority: tuple[int, ...] = ()
    tag: tuple[str, ...] = ()
    due_before: str | None = None
    due_after: str | None = None
    overdue: bool | None = None

    @property
    def counted(self) -> bool:
        """Whether task_counts answers total_count (no filter, or `completed` alone)."""
        return not (self.q or self.priority or self.tag or self.due_before or self.due_after
                    or self.overdue is not None)


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed list request."""

    filters: Filters
    sort: str = "created_at"
    order: str = "desc"
    limit: int = LIMIT_DEFAULT
    offset: int = 0
    after: tuple[Any, uuid.UUID] | None = None  # the cursor's (key, id)
    extra: dict[str, str] = field(default_factory=dict)


# --- the statement ---------------------------------------------------------------------------------

# Per sort order: the key the rows are ordered by (with id after it), as written for a column of the
# row and for the cursor's parameter, and how the key is printed into the next cursor. due_at puts
# tasks without one last in both orders with a placeholder, written as CASE because row-level security
# counts CASE and IS NULL as leakproof and COALESCE not (the indexes of 0004 use the same expressions).
_KEYS: dict[tuple[str, str], tuple[LiteralString, LiteralString]] = {
    ("created_at", "asc"): ("t.created_at", "%(after_key)s::timestamptz"),
    ("created_at", "desc"): ("t.created_at", "%(after_key)s::timestamptz"),
    ("updated_at", "asc"): ("t.updated_at", "%(after_key)s::timestamptz"),
    ("updated_at", "desc"): ("t.updated_at", "%(after_key)s::timestamptz"),
    ("due_at", "asc"): ("(CASE WHEN t.due_at IS NULL THEN 'infinity'::timestamptz ELSE t.due_at END)",
                        "(CASE WHEN %(after_key)s::timestamptz IS NULL THEN 'infinity'::timestamptz"
                        " ELSE %(after_key)s::timestamptz END)"),
    ("due_at", "desc"): ("(CASE WHEN t.due_at IS NULL THEN '-infinity'::timestamptz ELSE t.due_at END)",
                         "(CASE WHEN %(after_key)s::timestamptz IS NULL THEN '-infinity'::timestamptz"
                         " ELSE %(after_key)s::timestamptz END)"),
    ("priority", "asc"): ("t.priority", "%(after_key)s::smallint"),
    ("priority", "desc"): ("t.priority", "%(after_key)s::smallint"),
    ("title", "asc"): ("t.title", "%(after_key)s::text"),
    ("title", "desc"): ("t.title", "%(after_key)s::text"),
}
_UTC_MICROSECONDS: LiteralString = "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'"
# What the next cursor stores of the last row: the sorted column as the API prints it.
# The page carries that column as it is, and only the last row's is printed.
_CURSOR_COLUMNS: dict[str, tuple[LiteralString, LiteralString]] = {
    "created_at": ("t.created_at", "to_char(page.cursor_key AT TIME ZONE 'UTC', " + _UTC_MICROSECONDS + ")"),
    "updated_at": ("t.updated_at", "to_char(page.cursor_key AT TIME ZONE 'UTC', " + _UTC_MICROSECONDS + ")"),
    "due_at": ("t.due_at", "to_char(page.cursor_key AT TIME ZONE 'UTC', " + _UTC_MICROSECONDS + ")"),
    "priority": ("t.priority", "page.cursor_key"),
    "title": ("t.title", "page.cursor_key"),
}
# One condition per filter, each used only when the request has it. Only the search is not
# leakproof; the others can be index conditions under row-level security.
_FILTERS: dict[str, LiteralString] = {
    "completed": "t.completed = %(completed)s::boolean",
    "q": "(t.title || E'\\n' || coalesce(t.description, '')) ILIKE ALL (%(patterns)s::text[])",
    "priority": "t.priority = ANY (%(priorities)s::smallint[])",
    "tag": "t.tag_keys @> (SELECT taskapi.tag_keys(%(tags)s::text[]))",
    "due_before": "t.due_at < %(due_before)s::timestamptz",
    "due_after": "t.due_at > %(due_after)s::timestamptz",
    "overdue": "(coalesce(t.due_at < now(), false) AND NOT t.completed) = %(overdue)s::boolean",
}
_COUNTS: dict[bool | None, LiteralString] = {
    None: "(SELECT c.total FROM taskapi.task_counts AS c)",
    True: "(SELECT c.completed FROM taskapi.task_counts AS c)",
    False: "(SELECT c.total - c.completed FROM taskapi.task_counts AS c)",
}


@cache
def list_statement(sort: str, order: str, filters: frozenset[str], completed: bool | None,
                   after: bool) -> Statement:
    """The statement of a list request: its page (one row more than `limit`, to know whether another page
    follows), the JSON of the page's tasks, total_count, and the next cursor's key and id.

    One text per combination of sort order, filters used and first-or-later page; the few without
    the rarer filters are prepared on every connection, the rest sent unnamed (planned for their
    values each time, which is what a search or a tag filter wants anyway).
    """
    key, after_key = _KEYS[(sort, order)]
    direction: LiteralString = "DESC" if order == "desc" else "ASC"
    comparison: LiteralString = "<" if order == "desc" else ">"
    # The caller's user_id is repeated here for the planner, not for isolation (the policies decide that
    # alone): compared with a value it knows, not with the policy's InitPlan, it estimates how many
    # tasks this user has, and for a user with 300,000 walks the sort order's index instead of sorting.
    count_conditions: list[LiteralString] = ["t.user_id = %(user_id)s::text"]
    count_conditions += [_FILTERS[name] for name in sorted(filters)]
    conditions = list(count_conditions)
    if after:
        conditions.append("(" + key + ", t.id) " + comparison + " (" + after_key + ", %(after_id)s::uuid)")
    where: LiteralString = " AND ".join(conditions)
    count_where: LiteralString = " AND ".join(count_conditions)
    if filters <= {"completed"}:
        count = "coalesce(" + _COUNTS[completed] + ", 0)"
    else:
        count = "(SELECT count(*) FROM taskapi.tasks AS t WHERE " + count_where + ")"
    cursor_column, cursor_text = _CURSOR_COLUMNS[sort]
    text: LiteralString = (
        "WITH page AS (\n"
        # The task's JSON is built here, from the scanned row itself: passing the whole row out of the
        # CTE to build it there would make PostgreSQL form and take apart a composite per task (measured
        # a third more database time for a page of 50). Rows that OFFSET skips are still computed, so
        # their JSON is not built (the CASE): skipping 10,000 tasks measured 58 ms before, 8 ms now. n counts
        # from 1 on this page: the window numbers rows before OFFSET skips any.
        "    SELECT CASE WHEN row_number() OVER w > %(offset)s::int THEN taskapi.task_json(t) END AS task,\n"
        "           " + cursor_column + " AS cursor_key, t.id, row_number() OVER w - %(offset)s::int AS n\n"
        "    FROM taskapi.tasks AS t\n"
        "    WHERE " + where + "\n"
        "    WINDOW w AS (ORDER BY " + key + " " + direction + ", t.id " + direction + ")\n"
        "    ORDER BY " + key + " " + direction + ", t.id " + direction + "\n"
        "    LIMIT %(limit)s::int + 1 OFFSET %(offset)s::int\n"
        ")\n"
        "SELECT coalesce((SELECT json_agg(page.task ORDER BY page.n) FROM page\n"
        "                 WHERE page.n <= %(limit)s::int), '[]')::text,\n"
        "       " + count + "::text,\n"
        "       (SELECT json_build_array(" + cursor_text + ", page.id)::text FROM page\n"
        "        WHERE page.n = %(limit)s::int AND EXISTS (SELECT FROM page AS more WHERE more.n > %(limit)s::int))"
    )
    return Statement(text, prepare=filters <= {"completed"})


# The statement of the default list request (newest first, no filter, first page): the benchmark's
# database baseline sends exactly this.
LIST_TASKS = list_statement("created_at", "desc", frozenset(), None, False)


# --- the handlers ----------------------------------------------------------------------------------

_TRUE_FALSE = {"type": "string", "enum": ["true", "false"]}
_DATE_TIME = {"type": "string", "format": "date-time", "pattern": DUE_AT_PATTERN}
# Each query parameter's description and JSON Schema, as the OpenAPI document publishes them. The
# handler reads the parameters itself (`parse_query`), so its messages name the parameter in the
# project's words; the schemas say exactly what it accepts, so a generated client (or schemathesis)
# can tell a valid request from an invalid one.
_QUERY: dict[str, tuple[str, dict[str, Any]]] = {
    "completed": ("`true` or `false`: only tasks with that `completed`", _TRUE_FALSE),
    "q": (f"every white-space separated word (1 to {Q_WORDS_MAX}) must occur in the title or the description, "
          f"ignoring case; at most {Q_MAX} characters",
          {"type": "string", "maxLength": Q_MAX,
           "pattern": f"^[{WS}]*[^{WS}\\x00]+(?:[{WS}]+[^{WS}\\x00]+){{0,{Q_WORDS_MAX - 1}}}[{WS}]*$"}),
    "priority": ("`high`, `medium` or `low`; repeat it for tasks of any of several",
                 {"type": "array", "items": {"type": "string", "enum": list(PRIORITIES)}}),
    "tag": (f"a tag (ignoring case); repeat it for tasks carrying all of several (at most {TAGS_MAX})",
            {"type": "array", "maxItems": TAGS_MAX,
             "items": {"type": "string", "pattern": stripped_text_pattern(TAG_MAX)}}),
    "due_before": ("RFC 3339 timestamp with an offset (years 1000 to 2999): tasks due strictly before it",
                   _DATE_TIME),
    "due_after": ("RFC 3339 timestamp with an offset (years 1000 to 2999): tasks due strictly after it",
                  _DATE_TIME),
    "overdue": ("`true`: due in the past and not completed; `false`: every other task", _TRUE_FALSE),
    "sort": ("`created_at` (default), `updated_at`, `due_at`, `priority` or `title`; ties are broken by id, and "
             "tasks without a due_at come last in both orders", {"type": "string", "enum": list(SORTS)}),
    "order": ("`desc` (default) or `asc`", {"type": "string", "enum": list(ORDERS)}),
    "limit": (f"page size, 1 to {LIMIT_MAX} (default {LIMIT_DEFAULT})",
              {"type": "integer", "minimum": 1, "maximum": LIMIT_MAX}),
    "offset": (f"tasks to skip, 0 to {OFFSET_MAX} (default 0); not with `cursor`, which pages at any depth",
               {"type": "integer", "minimum": 0, "maximum": OFFSET_MAX}),
    "cursor": ("`next_cursor` of the previous page: the same query, after its last task. Any other value is "
               "a 400", {"type": "string"}),
}


def _doc(name: str) -> Any:
    description, schema = _QUERY[name]
    # oneOf None drops the `string | null` Litestar derives from the Python type the handler declares.
    return Parameter(description=description, required=False, schema_extra={"oneOf": None, **schema})


@get("/tasks", summary="List my tasks", responses=error_responses(not_modified=True),
     response_headers=[list_etag_header(), link_header()],
     description="One page of the caller's tasks and `total_count`, the number of tasks matching the filters "
                 "(ignoring limit, offset and cursor). `next_cursor` (also in a `Link: <...>; rel=\"next\"` "
                 "header) continues the same query; it is null on the last page.")
async def list_tasks(
    request: Request[Any, Any, Any],
    completed: Annotated[str | None, _doc("completed")] = None,
    q: Annotated[str | None, _doc("q")] = None,
    priority: Annotated[list[str] | None, _doc("priority")] = None,
    tag: Annotated[list[str] | None, _doc("tag")] = None,
    due_before: Annotated[str | None, _doc("due_before")] = None,
    due_after: Annotated[str | None, _doc("due_after")] = None,
    overdue: Annotated[str | None, _doc("overdue")] = None,
    sort: Annotated[str | None, _doc("sort")] = None,
    order: Annotated[str | None, _doc("order")] = None,
    limit: Annotated[str | None, _doc("limit")] = None,
    offset: Annotated[str | None, _doc("offset")] = None,
    cursor: Annotated[str | None, _doc("cursor")] = None,
    if_none_match_header: IfNoneMatchHeader = None,
) -> Response[TaskList]:
    query = parse_query(request.query_params)
    statement = list_statement(query.sort, query.order, _used(query.filters), query.filters.completed,
                               query.after is not None)
    row = await fetch(request, statement, {**_parameters(query), "user_id": current_caller(request).id})
    assert row is not None  # aggregates: always one row
    tasks, total, last = row
    assert tasks is not None and total is not None
    next_cursor = None if last is None else encode_cursor(query, msgspec.json.decode(last))
    body = b"".join((b'{"tasks":', tasks, b',"total_count":', total, b',"next_cursor":',
                     msgspec.json.encode(next_cursor), b"}"))
    etag = body_etag(body)
    if not none_match(request, etag):
        return not_modified(etag)
    headers = {"ETag": etag}
    if next_cursor is not None:
        link = f"{request.url.path}?cursor={next_cursor}"
        if limit is not None:
            link += f"&limit={query.limit}"
        headers["Link"] = f'<{link}>; rel="next"'
    return json_response(body, headers=headers)


# Deletes the caller's completed tasks; their counts move once, with the statement (0004's triggers).
CLEAR_COMPLETED = Statement("""
WITH cleared AS (DELETE FROM taskapi.tasks WHERE completed RETURNING 1)
SELECT json_build_object('deleted', count(*))::text FROM cleared
""")


@delete("/tasks", summary="Delete my completed tasks", status_code=200, responses=error_responses(),
        description="Only `completed=true` is accepted: the one bulk delete there is.")
async def clear_completed(
    request: Request[Any, Any, Any],
    completed: Annotated[str | None, Parameter(
        description="must be `true`", required=True,
        schema_extra={"oneOf": None, "type": "string", "enum": ["true"]})] = None,
) -> Response[Cleared]:
    params = request.query_params
    others = sorted(name for name in _QUERY if name != "completed" and name in params)
    if others:
        raise validation_error(others[0], "bulk delete accepts only completed=true")
    if params.getall("completed", []) != ["true"]:
        raise validation_error("completed", "bulk delete needs completed=true (it deletes your completed tasks)")
    row = await fetch(request, CLEAR_COMPLETED, {})
    assert row is not None
    return json_response(row[0])


# The caller's tags, compared ignoring case, each spelled as on the oldest task carrying it, most used
# first. Bounded: a client showing a tag cloud wants the top of it.
TAGS_MAX_LISTED = 1000
LIST_TAGS = Statement("""
SELECT json_build_object('tags', coalesce(json_agg(json_build_object('tag', s.tag, 'count', s.n)
                                                   ORDER BY s.n DESC, s.key), '[]'))::text
FROM (SELECT x.key, (array_agg(x.tag ORDER BY t.created_at, t.id))[1] AS tag, count(*) AS n
      FROM taskapi.tasks AS t CROSS JOIN LATERAL unnest(t.tags, t.tag_keys) AS x(tag, key)
      WHERE t.user_id = %(user_id)s::text  -- for the planner; the policies decide (see list_statement)
      GROUP BY x.key
      ORDER BY n DESC, key
      LIMIT 1000) AS s
""")


@get("/tags", summary="List my tags", responses=error_responses(),
     description=f"Every tag on the caller's tasks (ignoring case) with how many tasks carry it, most used first "
                 f"(at most {TAGS_MAX_LISTED}).")
async def list_tags(request: Request[Any, Any, Any]) -> Response[TagList]:
    row = await fetch(request, LIST_TAGS, {"user_id": current_caller(request).id})
    assert row is not None
    return json_response(row[0])


# --- parsing ---------------------------------------------------------------------------------------

def parse_query(params: Mapping[str, Any]) -> Query:
    """The list request's query parameters, checked; raises a 400 naming the first bad one.

    `params` is Litestar's multi-dict (`getall`). Unknown parameters are ignored (v1). With a cursor,
    the filters and sort come from it; any that the request repeats must match it.
    """
    values = _Params(params)
    limit = values.integer("limit", LIMIT_DEFAULT, 1, LIMIT_MAX)
    offset = values.integer("offset", 0, 0, OFFSET_MAX)
    filters = Filters(
        completed=values.boolean("completed"),
        q=values.words("q"),
        priority=values.priorities("priority"),
        tag=values.tags("tag"),
        due_before=values.timestamp("due_before"),
        due_after=values.timestamp("due_after"),
        overdue=values.boolean("overdue"),
    )
    sort = values.choice("sort", SORTS) or "created_at"
    order = values.choice("order", ORDERS) or "desc"
    raw_cursor = values.single("cursor")
    if raw_cursor is None:
        return Query(filters, sort, order, limit, offset)
    if "offset" in params:
        raise validation_error("cursor", "use either cursor or offset, not both")
    cursor = decode_cursor(raw_cursor)
    repeated = {name for name in ("completed", "q", "priority", "tag", "due_before", "due_after", "overdue",
                                  "sort", "order") if name in params}
    if repeated and (cursor.filters, cursor.sort, cursor.order) != (
            _only(filters, repeated, cursor.filters), sort if "sort" in repeated else cursor.sort,
            order if "order" in repeated else cursor.order):
        raise validation_error("cursor", "the cursor was made for another query (its filters or sort differ)")
    return Query(cursor.filters, cursor.sort, cursor.order, limit, 0, cursor.after)


def _only(filters: Filters, repeated: set[str], defaults: Filters) -> Filters:
    """`filters` where the request named the parameter, the cursor's elsewhere (to compare the two)."""
    return Filters(**{name: getattr(filters if name in repeated else defaults, name)
                      for name in Filters.__dataclass_fields__})


class _Params:
    """Typed readers of query parameters; each raises a 400 naming its parameter."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        self._params = params

    def all(self, name: str) -> list[str]:
        values: list[str] = self._params.getall(name, [])  # type: ignore[attr-defined]
        return values

    def single(self, name: str) -> str | None:
        values = self.all(name)
        if len(values) > 1:
            raise validation_error(name, "give it once")
        return values[0] if values else None

    def boolean(self, name: str) -> bool | None:
        value = self.single(name)
        if value is None:
            return None
        if value not in ("true", "false"):
            raise validation_error(name, "must be true or false")
        return value == "true"

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self.single(name)
        if value is None:
            return default
        if not value.isascii() or not value.isdigit() or int(value) < low or int(value) > high:
            raise validation_error(name, f"must be a whole number from {low} to {high}")
        return int(value)

    def choice(self, name: str, choices: Sequence[str]) -> str | None:
        value = self.single(name)
        if value is not None and value not in choices:
            raise validation_error(name, f"must be one of {', '.join(choices)}")
        return value

    def words(self, name: str) -> tuple[str, ...]:
        value = self.single(name)
        if value is None:
            return ()
        if len(value) > Q_MAX:
            raise validation_error(name, f"must be at most {Q_MAX} characters")
        if "\x00" in value:
            raise validation_error(name, "must not contain the NUL character")
        words = tuple(value.split())
        if not words:
            raise validation_error(name, "must contain a word (it is empty or white space only)")
        if len(words) > Q_WORDS_MAX:
            raise validation_error(name, f"at most {Q_WORDS_MAX} words")
        return words

    def priorities(self, name: str) -> tuple[int, ...]:
        chosen = set()
        for value in self.all(name):
            if value not in PRIORITIES:
                raise validation_error(name, "must be high, medium or low")
            chosen.add(PRIORITIES[value])
        return tuple(sorted(chosen))

    def tags(self, name: str) -> tuple[str, ...]:
        tags: dict[str, str] = {}
        for value in self.all(name):
            stripped = value.strip()
            if not stripped or len(stripped) > TAG_MAX or "\x00" in stripped:
                raise validation_error(name, f"each tag must be 1 to {TAG_MAX} characters (no NUL)")
            tags.setdefault(stripped.lower(), stripped)
        if len(tags) > TAGS_MAX:
            raise validation_error(name, f"at most {TAGS_MAX} tags")
        return tuple(sorted(tags))

    def timestamp(self, name: str) -> str | None:
        value = self.single(name)
        if value is None:
            return None
        parsed = _rfc3339(value)
        if parsed is None:
            raise validation_error(name, "must be an RFC 3339 timestamp with an offset (years 1000 to 2999), "
                                         "e.g. 2026-12-01T09:00:00Z")
        return parsed


def _rfc3339(value: str) -> str | None:
    """`value` as a UTC timestamp with microseconds, when it is RFC 3339 with an offset (years 1000 to
    2999, as due dates); else None."""
    try:
        parsed = msgspec.json.decode(msgspec.json.encode(value), type=datetime.datetime, strict=True)
    except msgspec.ValidationError:
        return None
    if parsed.tzinfo is None or not DUE_YEARS[0] <= parsed.year <= DUE_YEARS[1]:
        return None
    return parsed.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _used(filters: Filters) -> frozenset[str]:
    used = {"completed": filters.completed is not None, "q": bool(filters.q), "priority": bool(filters.priority),
            "tag": bool(filters.tag), "due_before": filters.due_before is not None,
            "due_after": filters.due_after is not None, "overdue": filters.overdue is not None}
    return frozenset(name for name, on in used.items() if on)


def _parameters(query: Query) -> dict[str, object]:
    f = query.filters
    values: dict[str, object] = {
        "limit": query.limit, "offset": query.offset, "completed": f.completed, "overdue": f.overdue,
        "patterns": [_like_pattern(word) for word in f.q], "priorities": list(f.priority), "tags": list(f.tag),
        "due_before": f.due_before, "due_after": f.due_after,
    }
    if query.after is not None:
        values["after_key"], values["after_id"] = query.after
    return values


def _like_pattern(word: str) -> str:
    """`%word%` for ILIKE, with LIKE's own characters escaped (backslash is its default escape)."""
    escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


# --- the cursor ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Cursor:
    sort: str
    order: str
    filters: Filters
    after: tuple[Any, uuid.UUID]


def encode_cursor(query: Query, last: list[Any]) -> str:
    """The cursor after the row whose sorted column and id the list statement returned as `last`."""
    f = query.filters
    payload = msgspec.json.encode({
        "v": CURSOR_VERSION, "s": query.sort, "o": query.order, "k": last[0], "i": last[1],
        "f": [f.completed, list(f.q), list(f.priority), list(f.tag), f.due_before, f.due_after, f.overdue],
    })
    return _b64(payload) + "." + _b64(_checksum(payload))


def decode_cursor(raw: str) -> Cursor:
    """The cursor a previous page returned; a 400 for anything else."""
    try:
        encoded, _, check = raw.partition(".")
        payload = _unb64(encoded)
        if _unb64(check) != _checksum(payload):
            raise ValueError("checksum")
        data = msgspec.json.decode(payload, type=_CursorData)
        if data.v != CURSOR_VERSION or data.s not in SORTS or data.o not in ORDERS:
            raise ValueError("version, sort or order")
        completed, q, priority, tag, due_before, due_after, overdue = data.f
        filters = Filters(completed=completed, q=tuple(q), priority=tuple(priority), tag=tuple(tag),
                          due_before=due_before, due_after=due_after, overdue=overdue)
        return Cursor(data.s, data.o, filters, (_cursor_key(data.s, data.k), uuid.UUID(data.i)))
    except (ValueError, TypeError, binascii.Error, msgspec.DecodeError):
        raise validation_error("cursor", "not a cursor this API returned (changed, truncated or too old)") from None


class _CursorData(msgspec.Struct, forbid_unknown_fields=True):
    v: int
    s: str
    o: str
    k: str | int | None
    i: str
    f: tuple[bool | None, list[str], list[int], list[str], str | None, str | None, bool | None]


def _cursor_key(sort: str, key: str | int | None) -> Any:
    """The key as the statement expects it for this sort order; ValueError when it cannot be one."""
    if sort == "priority":
        if not isinstance(key, int) or isinstance(key, bool) or key not in PRIORITIES.values():
            raise ValueError("priority key")
        return key
    if key is None:
        if sort != "due_at":
            raise ValueError("null key")
        return None
    if not isinstance(key, str):
        raise ValueError("key type")
    if sort == "title":
        return key
    if _rfc3339(key) != key:
        raise ValueError("timestamp key")
    return key


def _checksum(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, digest_size=12, person=_CHECKSUM_PERSON).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if not text or not text.isascii():
        raise ValueError("empty or not ASCII")
    # validate: a character outside the alphabet is an error, not something to skip.
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)

