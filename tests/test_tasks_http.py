"""CONTRACT.md sections 2-5 over HTTP, one user at a time (isolation is in test_isolation_http.py)."""

from __future__ import annotations

import re
import uuid
from datetime import datetime

import pytest

from conftest import CORS_ORIGIN, make_user

RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
TASK_FIELDS = {"id", "title", "description", "completed", "user_id", "created_at", "updated_at",  # v1
               "due_at", "priority", "tags", "recurrence", "next_task_id"}  # v1.2


def create(http, user, **body):
    response = http.post("/api/tasks", json=body, headers=user.headers)
    assert response.status_code == 201, response.text
    return response.json()


def assert_error(response, status, code):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]
    assert set(body) <= {"error", "message", "details"}
    return body


def assert_validation(response, field):
    body = assert_error(response, 400, "validation_error")
    assert any(d["field"] == field for d in body["details"]), body
    return body


# --- create ---------------------------------------------------------------------------------------------

def test_create_returns_the_task_with_location(http, alice):
    response = http.post("/api/tasks", json={"title": "Buy milk", "description": "2 litres"}, headers=alice.headers)
    assert response.status_code == 201
    task = response.json()
    assert set(task) == TASK_FIELDS
    assert str(uuid.UUID(task["id"])) == task["id"]  # the canonical form: lower-case hex, hyphenated
    assert task["title"] == "Buy milk"
    assert task["description"] == "2 litres"
    assert task["completed"] is False
    assert task["user_id"] == alice.id
    assert RFC3339_UTC.match(task["created_at"]) and RFC3339_UTC.match(task["updated_at"])
    assert response.headers["location"] == f"/api/tasks/{task['id']}"
    assert http.get(response.headers["location"], headers=alice.headers).json() == task


def test_create_strips_title_and_stores_blank_description_as_null(http, alice):
    task = create(http, alice, title="  \t spaced out \n ", description="   ")
    assert task["title"] == "spaced out"
    assert task["description"] is None
    assert create(http, alice, title="x", description="")["description"] is None
    assert create(http, alice, title="x", description=None)["description"] is None


def test_create_with_completed_true(http, alice):
    assert create(http, alice, title="done already", completed=True)["completed"] is True


def test_title_limits_count_code_points(http, alice):
    assert create(http, alice, title="é" * 255)["title"] == "é" * 255
    assert create(http, alice, title="  " + "a" * 255 + "  ")["title"] == "a" * 255
    assert_validation(http.post("/api/tasks", json={"title": "a" * 256}, headers=alice.headers), "title")
    assert_validation(http.post("/api/tasks", json={"title": ""}, headers=alice.headers), "title")
    assert_validation(http.post("/api/tasks", json={"title": " \n\t "}, headers=alice.headers), "title")


def test_description_limit(http, alice):
    assert len(create(http, alice, title="t", description="d" * 1000)["description"]) == 1000
    assert_validation(http.post("/api/tasks", json={"title": "t", "description": "d" * 1001}, headers=alice.headers),
                      "description")


@pytest.mark.parametrize("body, field", [
    ({"title": "a\u0000b"}, "title"),
    ({"title": "ok", "description": "a\u0000b"}, "description"),
    ({"title": 5}, "title"),
    ({"title": None}, "title"),
    ({"title": ["x"]}, "title"),
    ({"title": "ok", "completed": "true"}, "completed"),
    ({"title": "ok", "completed": 1}, "completed"),
    ({"title": "ok", "description": 7}, "description"),
    ({"description": "no title"}, "title"),
    ({"title": "ok", "id": str(uuid.uuid4())}, "id"),
    ({"title": "ok", "user_id": "someone"}, "user_id"),
    ({"title": "ok", "created_at": "2020-01-01T00:00:00Z"}, "created_at"),
    ({"title": "ok", "updated_at": "2020-01-01T00:00:00Z"}, "updated_at"),
    ({"title": "ok", "priority": 3}, "priority"),
])
def test_create_validation_errors(http, alice, body, field):
    assert_validation(http.post("/api/tasks", json=body, headers=alice.headers), field)


@pytest.mark.parametrize("content", [b"{not json", b"[]", b"null", b"\"title\"", b"{\"title\": \"\xff\"}", b""])
def test_create_rejects_bodies_that_are_not_a_json_object(http, alice, content):
    response = http.post("/api/tasks", content=content,
                         headers={**alice.headers, "Content-Type": "application/json"})
    body = assert_error(response, 400, "validation_error")
    assert body["details"]


def test_nothing_is_stored_when_validation_fails(http):
    user = make_user()
    assert_validation(http.post("/api/tasks", json={"title": "ok", "completed": "yes"}, headers=user.headers),
                      "completed")
    assert_validation(http.post("/api/tasks", json={"title": "a" * 300}, headers=user.headers), "title")
    assert http.get("/api/tasks", headers=user.headers).json() == {"tasks": [], "total_count": 0, "next_cursor": None}


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml",
                                          "application/json; charset=latin-1"])
def test_body_that_is_not_json_is_415(http, alice, content_type):
    response = http.post("/api/tasks", content=b'{"title": "x"}',
                         headers={**alice.headers, "Content-Type": content_type})
    assert_error(response, 415, "unsupported_media_type")


def test_json_with_utf8_charset_is_accepted(http, alice):
    response = http.post("/api/tasks", content=b'{"title": "x"}',
                         headers={**alice.headers, "Content-Type": "application/json; charset=UTF-8"})
    assert response.status_code == 201


def test_body_over_64_kib_is_413(http, alice):
    big = b'{"title": "' + b"a" * (64 * 1024) + b'"}'
    response = http.post("/api/tasks", content=big, headers={**alice.headers, "Content-Type": "application/json"})
    assert_error(response, 413, "payload_too_large")


# --- read -------------------------------------------------------------------------------------------------

def test_get_unknown_id_and_non_uuid_are_404(http, alice):
    assert_error(http.get(f"/api/tasks/{uuid.uuid4()}", headers=alice.headers), 404, "not_found")
    assert_error(http.get("/api/tasks/not-a-uuid", headers=alice.headers), 404, "not_found")
    assert_error(http.get("/api/tasks/123", headers=alice.headers), 404, "not_found")


def test_list_is_newest_first_with_total_count(http):
    user = make_user()
    ids = [create(http, user, title=f"t{i}")["id"] for i in range(5)]
    body = http.get("/api/tasks", headers=user.headers).json()
    assert body["total_count"] == 5
    assert [t["id"] for t in body["tasks"]] == ids[::-1]
    stamps = [(t["created_at"], t["id"]) for t in body["tasks"]]
    assert stamps == sorted(stamps, reverse=True)


def test_list_limit_offset_and_completed_filter(http):
    user = make_user()
    tasks = [create(http, user, title=f"t{i}", completed=(i % 2 == 0)) for i in range(7)]
    newest_first = [t["id"] for t in reversed(tasks)]
    page = http.get("/api/tasks", params={"limit": 2, "offset": 1}, headers=user.headers).json()
    assert [t["id"] for t in page["tasks"]] == newest_first[1:3]
    assert page["total_count"] == 7
    done = http.get("/api/tasks", params={"completed": "true"}, headers=user.headers).json()
    assert done["total_count"] == 4 and all(t["completed"] for t in done["tasks"])
    todo = http.get("/api/tasks", params={"completed": "false", "limit": 1}, headers=user.headers).json()
    assert todo["total_count"] == 3 and len(todo["tasks"]) == 1 and not todo["tasks"][0]["completed"]
    beyond = http.get("/api/tasks", params={"offset": 100}, headers=user.headers).json()
    assert beyond == {"tasks": [], "total_count": 7, "next_cursor": None}


def test_list_default_limit_is_50_and_max_200(http):
    user = make_user()
    for i in range(55):
        create(http, user, title=f"t{i}")
    assert len(http.get("/api/tasks", headers=user.headers).json()["tasks"]) == 50
    assert len(http.get("/api/tasks", params={"limit": 200}, headers=user.headers).json()["tasks"]) == 55


@pytest.mark.parametrize("params, field", [
    ({"limit": 0}, "limit"), ({"limit": 201}, "limit"), ({"limit": "ten"}, "limit"), ({"limit": -1}, "limit"),
    ({"offset": -1}, "offset"), ({"offset": "x"}, "offset"),
    ({"completed": "yes"}, "completed"), ({"completed": "1"}, "completed"), ({"completed": "TRUE"}, "completed"),
])
def test_list_rejects_bad_query_parameters(http, alice, params, field):
    assert_validation(http.get("/api/tasks", params=params, headers=alice.headers), field)


# --- change -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_update_changes_only_the_fields_sent(http, alice, method):
    task = create(http, alice, title="old", description="keep me")
    response = http.request(method, f"/api/tasks/{task['id']}", json={"title": "  new  "}, headers=alice.headers)
    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["title"] == "new"
    assert updated["description"] == "keep me"
    assert updated["completed"] is False
    assert updated["created_at"] == task["created_at"]
    assert datetime.fromisoformat(updated["updated_at"]) > datetime.fromisoformat(task["updated_at"])
    cleared = http.request(method, f"/api/tasks/{task['id']}", json={"description": None, "completed": True},
                           headers=alice.headers).json()
    assert cleared["description"] is None and cleared["completed"] is True and cleared["title"] == "new"
    blank = http.request(method, f"/api/tasks/{task['id']}", json={"description": "  "}, headers=alice.headers)
    assert blank.json()["description"] is None


def test_updated_at_changes_on_every_update(http, alice):
    task = create(http, alice, title="same")
    stamps = [task["updated_at"]]
    for _ in range(3):
        stamps.append(http.put(f"/api/tasks/{task['id']}", json={"title": "same"}, headers=alice.headers)
                      .json()["updated_at"])
    assert len(set(stamps)) == 4


@pytest.mark.parametrize("body, field", [
    ({}, "body"),
    ({"title": ""}, "title"),
    ({"title": None}, "title"),
    ({"completed": None}, "completed"),
    ({"completed": "false"}, "completed"),
    ({"title": "a" * 256}, "title"),
    ({"description": "d" * 1001}, "description"),
    ({"id": str(uuid.uuid4())}, "id"),
    ({"user_id": "someone-else"}, "user_id"),
    ({"created_at": "2020-01-01T00:00:00Z"}, "created_at"),
    ({"title": "x", "extra": 1}, "extra"),
])
@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_update_validation_errors_leave_the_task_alone(http, alice, method, body, field):
    task = create(http, alice, title="untouched")
    assert_validation(http.request(method, f"/api/tasks/{task['id']}", json=body, headers=alice.headers), field)
    assert http.get(f"/api/tasks/{task['id']}", headers=alice.headers).json() == task


def test_update_unknown_task_is_404(http, alice):
    assert_error(http.put(f"/api/tasks/{uuid.uuid4()}", json={"title": "x"}, headers=alice.headers), 404, "not_found")
    assert_error(http.patch("/api/tasks/nope", json={"title": "x"}, headers=alice.headers), 404, "not_found")


def test_toggle_flips_completed(http, alice):
    task = create(http, alice, title="flip")
    first = http.patch(f"/api/tasks/{task['id']}/toggle", headers=alice.headers)
    assert first.status_code == 200 and first.json()["completed"] is True
    second = http.patch(f"/api/tasks/{task['id']}/toggle", headers=alice.headers)
    assert second.json()["completed"] is False
    assert_error(http.patch(f"/api/tasks/{uuid.uuid4()}/toggle", headers=alice.headers), 404, "not_found")


def test_delete_then_gone(http, alice):
    task = create(http, alice, title="bye")
    response = http.delete(f"/api/tasks/{task['id']}", headers=alice.headers)
    assert response.status_code == 200
    assert response.json() == {"message": "Task deleted"}
    assert_error(http.get(f"/api/tasks/{task['id']}", headers=alice.headers), 404, "not_found")
    assert_error(http.delete(f"/api/tasks/{task['id']}", headers=alice.headers), 404, "not_found")


# --- routing, headers, operations ---------------------------------------------------------------------

def test_unknown_route_is_404_json(http, alice):
    assert_error(http.get("/api/nothing-here/at/all", headers=alice.headers), 404, "not_found")
    assert_error(http.get("/nope"), 404, "not_found")


def test_wrong_method_is_405_json(http, alice):
    assert_error(http.put("/api/tasks", headers=alice.headers), 405, "method_not_allowed")
    assert_error(http.post("/health"), 405, "method_not_allowed")


def test_request_id_is_echoed_when_sane_and_generated_otherwise(http, alice):
    echoed = http.get("/api/tasks", headers={**alice.headers, "X-Request-ID": "abc-123.x_Y:z"})
    assert echoed.headers["x-request-id"] == "abc-123.x_Y:z"
    for insane in ["has spaces", "x" * 200, "<script>"]:
        replaced = http.get("/api/tasks", headers={**alice.headers, "X-Request-ID": insane})
        assert replaced.headers["x-request-id"] != insane and replaced.headers["x-request-id"]
    for response in (http.get("/health"), http.get("/nope"), http.get("/api/tasks"), http.put("/api/tasks")):
        assert response.headers.get("x-request-id"), response.status_code


def test_request_id_appears_in_the_server_log(http, server, alice):
    request_id = f"trace-{uuid.uuid4().hex}"
    http.get("/api/tasks", headers={**alice.headers, "X-Request-ID": request_id})
    log = server.log()
    line = next(line for line in log.splitlines() if request_id in line)
    assert '"route":"/api/tasks"' in line and '"status":200' in line
    assert alice.id not in log and alice.token not in log


def test_health_and_ready(http):
    assert http.get("/health").json() == {"status": "ok"}
    ready = http.get("/ready")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}


def test_cors_preflight_needs_no_token(http):
    response = http.options("/api/tasks", headers={
        "Origin": CORS_ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert response.status_code in (200, 204)
    assert response.headers["access-control-allow-origin"] == CORS_ORIGIN
    allowed = response.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed and "if-match" in allowed


def test_cors_exposes_headers_on_actual_requests(http, alice):
    response = http.post("/api/tasks", json={"title": "cors"}, headers={**alice.headers, "Origin": CORS_ORIGIN})
    assert response.headers["access-control-allow-origin"] == CORS_ORIGIN
    exposed = response.headers["access-control-expose-headers"].lower()
    assert {"location", "etag", "x-request-id"} <= {h.strip() for h in exposed.split(",")}


def test_cors_ignores_other_origins(http, alice):
    response = http.get("/api/tasks", headers={**alice.headers, "Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in response.headers


def test_openapi_documents_every_endpoint_and_error_body(http):
    doc = http.get("/schema/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    paths = doc["paths"]
    expected = {
        "/api/tasks": {"get", "post"},
        "/api/tasks/{task_id}": {"get", "put", "patch", "delete"},
        "/api/tasks/{task_id}/toggle": {"patch"},
        "/api/{user_id}/tasks": {"get", "post"},
        "/api/{user_id}/tasks/{task_id}": {"get", "put", "patch", "delete"},
        "/api/{user_id}/tasks/{task_id}/complete": {"patch"},
        "/health": {"get"},
        "/ready": {"get"},
    }
    for path, methods in expected.items():
        assert methods <= set(paths[path]), path
    assert doc["components"]["securitySchemes"]["BearerToken"]["scheme"] == "bearer"
    error_ref = "#/components/schemas/ErrorBody"
    for path, item in paths.items():
        if not path.startswith("/api"):
            continue
        for method, operation in item.items():
            for status in ("400", "401", "403", "404", "503"):
                schema = operation["responses"][status]["content"]["application/json"]["schema"]
                assert schema == {"$ref": error_ref}, (path, method, status)
            assert operation["security"] == [{"BearerToken": []}]
