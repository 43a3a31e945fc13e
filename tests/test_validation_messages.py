"""Issue #14.7: every validation message in the API's own words, naming the field.

The wording is pinned here for each field and each JSON type a client can send instead of the right
one: a msgspec or Litestar release that rewords its messages must not change what a client reads.
"""

from __future__ import annotations

import msgspec
import pytest

from api.errors import from_body_error
from api.tasks import READ_ONLY_FIELDS, TaskChange, TaskCreate

STRING = "must be a string"
STRING_OR_NULL = "must be a string or null"
BOOLEAN = "must be a boolean"
TIMESTAMP_OR_NULL = "must be an RFC 3339 timestamp with an offset (e.g. 2026-12-01T09:00:00Z) or null"
PRIORITY = "must be one of high, medium, low"
TAGS = "must be an array of at most 20 strings"
RECURRENCE = "must be one of daily, weekly, monthly or null"

# (field, value sent, field named in the answer, message). One row for each JSON type that is wrong for
# the field: string, number, boolean, null, array, object; and the wrong values of the right type that
# the body's decoder refuses (the handlers' own checks, such as lengths, have tests of their own).
CASES = [
    ("title", 1, "title", STRING),
    ("title", 1.5, "title", STRING),
    ("title", True, "title", STRING),
    ("title", None, "title", STRING),
    ("title", ["a"], "title", STRING),
    ("title", {"a": 1}, "title", STRING),
    ("description", 1, "description", STRING_OR_NULL),
    ("description", False, "description", STRING_OR_NULL),
    ("description", ["a"], "description", STRING_OR_NULL),
    ("description", {}, "description", STRING_OR_NULL),
    ("completed", "true", "completed", BOOLEAN),
    ("completed", 1, "completed", BOOLEAN),
    ("completed", None, "completed", BOOLEAN),
    ("completed", [True], "completed", BOOLEAN),
    ("completed", {}, "completed", BOOLEAN),
    ("due_at", "tomorrow", "due_at", TIMESTAMP_OR_NULL),
    ("due_at", "2026-12-01T09:00:00", "due_at", TIMESTAMP_OR_NULL),  # no offset
    ("due_at", "2026-13-01T09:00:00Z", "due_at", TIMESTAMP_OR_NULL),
    ("due_at", 1_764_579_600, "due_at", TIMESTAMP_OR_NULL),
    ("due_at", True, "due_at", TIMESTAMP_OR_NULL),
    ("due_at", [], "due_at", TIMESTAMP_OR_NULL),
    ("due_at", {}, "due_at", TIMESTAMP_OR_NULL),
    ("priority", "urgent", "priority", PRIORITY),
    ("priority", "HIGH", "priority", PRIORITY),
    ("priority", 3, "priority", PRIORITY),
    ("priority", True, "priority", PRIORITY),
    ("priority", None, "priority", PRIORITY),
    ("priority", ["high"], "priority", PRIORITY),
    ("priority", {}, "priority", PRIORITY),
    ("tags", "home", "tags", TAGS),
    ("tags", 1, "tags", TAGS),
    ("tags", True, "tags", TAGS),
    ("tags", None, "tags", TAGS),
    ("tags", {"home": 1}, "tags", TAGS),
    ("tags", [f"t{i}" for i in range(21)], "tags", TAGS),
    ("tags", [1], "tags[0]", STRING),
    ("tags", ["home", None], "tags[1]", STRING),
    ("tags", ["home", "work", True], "tags[2]", STRING),
    ("tags", [["home"]], "tags[0]", STRING),
    ("tags", [{}], "tags[0]", STRING),
    ("recurrence", "yearly", "recurrence", RECURRENCE),
    ("recurrence", 7, "recurrence", RECURRENCE),
    ("recurrence", False, "recurrence", RECURRENCE),
    ("recurrence", ["daily"], "recurrence", RECURRENCE),
    ("recurrence", {}, "recurrence", RECURRENCE),
]


def case_id(case: tuple) -> str:
    return f"{case[0]}={msgspec.json.encode(case[1]).decode()[:20]}"


def assert_one_detail(response, field: str, message: str) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "validation_error"
    assert body["details"] == [{"field": field, "message": message}], body


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_create_names_the_field_in_the_apis_words(http, alice, case):
    name, value, field, message = case
    body = {"title": "Buy milk", name: value}
    assert_one_detail(http.post("/api/tasks", json=body, headers=alice.headers), field, message)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_change_names_the_field_in_the_apis_words(http, alice, case):
    name, value, field, message = case
    task = http.post("/api/tasks", json={"title": "Buy milk"}, headers=alice.headers).json()
    response = http.patch(f"/api/tasks/{task['id']}", json={name: value}, headers=alice.headers)
    assert_one_detail(response, field, message)
    assert http.get(f"/api/tasks/{task['id']}", headers=alice.headers).json() == task  # left alone


@pytest.mark.parametrize("content, field, message", [
    (b'{"title": "a", "colour": "red"}', "colour", "unknown field"),
    (b'{"title": "a", "id": "5d0c6b8e-1111-4c6e-9d7a-3e2b1c0d9f8e"}', "id", "read-only: set by the server"),
    (b'{"title": "a", "user_id": "mallory"}', "user_id", "read-only: set by the server"),
    (b'{"title": "a", "created_at": "2026-01-01T00:00:00Z"}', "created_at", "read-only: set by the server"),
    (b'{"title": "a", "next_task_id": null}', "next_task_id", "read-only: set by the server"),
    (b'{"description": "no title"}', "title", "required"),
    (b'["Buy milk"]', "body", "must be a JSON object"),
    (b'"Buy milk"', "body", "must be a JSON object"),
    (b"42", "body", "must be a JSON object"),
    (b"null", "body", "must be a JSON object"),
    (b'{"title": "a"', "body", "not valid JSON (UTF-8)"),
    (b'{"title": "\xff"}', "body", "not valid JSON (UTF-8)"),
    (b"", "body", "required: send a JSON object"),  # Litestar's own check: no body at all
], ids=lambda value: value.decode(errors="replace")[:24] if isinstance(value, bytes) else None)
def test_body_level_messages(http, alice, content, field, message):
    headers = {**alice.headers, "Content-Type": "application/json"}
    assert_one_detail(http.post("/api/tasks", content=content, headers=headers), field, message)


def test_the_message_comes_from_the_declared_type_not_from_msgspecs_wording():
    """Only the path is read from msgspec's message: a reworded message still gives the API's own words."""
    for model in (TaskCreate, TaskChange):
        for wording, field, message in [
            ("Something else entirely - at `$.completed`", "completed", BOOLEAN),
            ("Nouvelle formulation - at `$.tags[3]`", "tags[3]", STRING),
            ("Other words - at `$.recurrence`", "recurrence", RECURRENCE),
            ("Other words - at `$.no_such_field`", "no_such_field", "is not valid"),
            ("Other words", "body", "must be a JSON object"),
        ]:
            error = from_body_error(msgspec.ValidationError(wording), model, read_only=READ_ONLY_FIELDS)
            assert [(d.field, d.message) for d in error.details or []] == [(field, message)]
