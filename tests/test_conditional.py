"""Issue #12 over HTTP: If-Match on every write, If-None-Match on one task, HEAD everywhere, CORS, JSON 404/405.

The list's ETag and If-None-Match are in test_listing.py; Idempotency-Key is in test_idempotency.py.
"""

from __future__ import annotations

import threading
import uuid

import httpx
import psycopg
import pytest

from conftest import CORS_ORIGIN, lock_waiters, wait_until

WRITES = ["PUT", "PATCH", "toggle", "DELETE"]


def create(http, user, **body):
    response = http.post("/api/tasks", json={"title": "versioned", **body}, headers=user.headers)
    assert response.status_code == 201, response.text
    return response.json(), response.headers["etag"]


def write(http, user, kind, task_id, *, compat=False, **headers):
    """One write of `kind` to a task, through /api/tasks or the /api/{user_id} twin."""
    base = f"/api/{user.id}/tasks" if compat else "/api/tasks"
    headers = {**user.headers, **headers}
    if kind == "toggle":
        return http.patch(f"{base}/{task_id}/{'complete' if compat else 'toggle'}", headers=headers)
    if kind == "DELETE":
        return http.delete(f"{base}/{task_id}", headers=headers)
    return http.request(kind, f"{base}/{task_id}", json={"title": "changed"}, headers=headers)


def assert_error(response, status, code):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == code and body["message"], body
    return body


def current(http, user, task_id):
    response = http.get(f"/api/tasks/{task_id}", headers=user.headers)
    assert response.status_code == 200, response.text
    return response


# --- If-Match --------------------------------------------------------------------------------------

@pytest.mark.parametrize("compat", [False, True], ids=["api", "compat"])
@pytest.mark.parametrize("kind", WRITES)
def test_a_write_with_the_current_etag_happens(http, alice, kind, compat):
    task, etag = create(http, alice)
    response = write(http, alice, kind, task["id"], compat=compat, **{"If-Match": etag})
    assert response.status_code == 200, response.text
    if kind != "DELETE":
        assert response.headers["etag"] != etag
        assert current(http, alice, task["id"]).headers["etag"] == response.headers["etag"]


@pytest.mark.parametrize("compat", [False, True], ids=["api", "compat"])
@pytest.mark.parametrize("kind", WRITES)
def test_a_write_with_a_stale_etag_is_412_and_changes_nothing(http, alice, kind, compat):
    task, stale = create(http, alice)
    changed = http.patch(f"/api/tasks/{task['id']}", json={"description": "moved on"}, headers=alice.headers)
    before = current(http, alice, task["id"])
    response = write(http, alice, kind, task["id"], compat=compat, **{"If-Match": stale})
    assert_error(response, 412, "precondition_failed")
    assert response.headers["etag"] == changed.headers["etag"] == before.headers["etag"]
    after = current(http, alice, task["id"])
    assert after.content == before.content and after.headers["etag"] == before.headers["etag"]


def test_two_concurrent_patches_with_the_same_etag_one_wins(http, server, database, alice):
    """Both requests read the same version before either writes: exactly one 200 and one 412, every time.

    The test holds the row lock, so both PATCHes have found the task and wait for it; a check made
    apart from the write (read the version, then update) would let both through.
    """
    task, _ = create(http, alice)
    url = f"{server.base_url}/api/tasks/{task['id']}"

    def patch(etag: str, title: str, statuses: list[int]) -> None:
        statuses.append(httpx.patch(url, json={"title": title}, headers={**alice.headers, "If-Match": etag},
                                    timeout=30).status_code)

    for attempt in range(20):
        etag = current(http, alice, task["id"]).headers["etag"]
        statuses: list[int] = []
        with psycopg.connect(database.admin_dsn) as lock:
            lock.execute("SELECT 1 FROM taskapi.tasks WHERE id = %s FOR UPDATE", [task["id"]])
            threads = [threading.Thread(target=patch, args=(etag, f"attempt {attempt} writer {n}", statuses))
                       for n in range(2)]
            for thread in threads:
                thread.start()
            wait_until(lambda: lock_waiters(database) >= 2, timeout=20, what="both PATCHes waiting on the row")
            lock.rollback()
        for thread in threads:
            thread.join(timeout=30)
        assert sorted(statuses) == [200, 412], (attempt, statuses)


def test_403_and_404_come_before_412(http, alice, bob):
    task, etag = create(http, bob)
    for if_match in (etag, '"stale"', "*"):
        for kind in WRITES:
            assert_error(write(http, alice, kind, task["id"], **{"If-Match": if_match}), 403, "forbidden")
            response = write(http, alice, kind, str(uuid.uuid4()), **{"If-Match": if_match})
            assert_error(response, 404, "not_found")
            assert "etag" not in response.headers
    assert current(http, bob, task["id"]).headers["etag"] == etag


@pytest.mark.parametrize("kind", WRITES)
def test_if_match_star_means_the_task_exists(http, alice, bob, kind):
    task, _ = create(http, alice)
    assert write(http, alice, kind, task["id"], **{"If-Match": "*"}).status_code == 200
    assert_error(write(http, alice, kind, str(uuid.uuid4()), **{"If-Match": "*"}), 404, "not_found")
    others, _ = create(http, bob)
    assert_error(write(http, alice, kind, others["id"], **{"If-Match": "*"}), 403, "forbidden")


def test_if_match_compares_strongly_and_accepts_a_list(http, alice):
    task, etag = create(http, alice)
    weak = write(http, alice, "PATCH", task["id"], **{"If-Match": f"W/{etag}"})
    assert_error(weak, 412, "precondition_failed")
    assert weak.headers["etag"] == etag
    listed = write(http, alice, "PATCH", task["id"], **{"If-Match": f'"other", W/"x", {etag}'})
    assert listed.status_code == 200, listed.text
    # Two If-Match fields are one list (RFC 9110 section 5.3).
    etag = listed.headers["etag"]
    both = http.patch(f"/api/tasks/{task['id']}", json={"title": "twice"},
                      headers=[*alice.headers.items(), ("If-Match", '"other"'), ("If-Match", etag)])
    assert both.status_code == 200, both.text


@pytest.mark.parametrize("value", ["abc", '"unterminated', '*, "x"', '"a" "b"', 'W/ "x"', '""x"', 'w/"x"', ",", "",
                                   '"sp ace"', '"x",, W/'])
@pytest.mark.parametrize("kind", WRITES)
def test_a_malformed_if_match_is_400_and_changes_nothing(http, alice, kind, value):
    task, etag = create(http, alice)
    body = assert_error(write(http, alice, kind, task["id"], **{"If-Match": value}), 400, "validation_error")
    assert body["details"][0]["field"] == "If-Match"
    assert current(http, alice, task["id"]).headers["etag"] == etag


# --- If-None-Match on one task -----------------------------------------------------------------------

def test_if_none_match_on_one_task(http, alice):
    task, etag = create(http, alice)
    url = f"/api/tasks/{task['id']}"
    for matching in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        response = http.get(url, headers={**alice.headers, "If-None-Match": matching})
        assert response.status_code == 304, (matching, response.text)
        assert response.content == b"" and response.headers["etag"] == etag
    stale = http.get(url, headers={**alice.headers, "If-None-Match": '"stale"'})
    assert stale.status_code == 200 and stale.json() == task and stale.headers["etag"] == etag
    http.patch(f"{url}/toggle", headers=alice.headers)
    changed = http.get(url, headers={**alice.headers, "If-None-Match": etag})
    assert changed.status_code == 200 and changed.json()["completed"] is True and changed.headers["etag"] != etag
    malformed = http.get(url, headers={**alice.headers, "If-None-Match": "nope"})
    assert assert_error(malformed, 400, "validation_error")["details"][0]["field"] == "If-None-Match"


def test_if_none_match_does_not_reveal_another_users_task(http, alice, bob):
    task, etag = create(http, bob)
    for value in (etag, "*"):
        assert_error(http.get(f"/api/tasks/{task['id']}", headers={**alice.headers, "If-None-Match": value}),
                     403, "forbidden")


# --- HEAD ------------------------------------------------------------------------------------------

def get_routes(user, task_id):
    return ["/health", "/ready", "/api/tasks", "/api/tasks?limit=1", f"/api/tasks/{task_id}", "/api/tags",
            f"/api/{user.id}/tasks", f"/api/{user.id}/tasks/{task_id}", f"/api/{user.id}/tags",
            "/schema/openapi.json"]


def test_head_answers_like_get_without_a_body(http, alice):
    task, _ = create(http, alice, tags=["head"])
    create(http, alice)
    for path in get_routes(alice, task["id"]):
        got = http.get(path, headers=alice.headers)
        head = http.head(path, headers=alice.headers)
        assert head.status_code == got.status_code == 200, path
        assert head.content == b"", path
        assert head.headers["content-length"] == str(len(got.content)), path
        for name in ("content-type", "etag", "link"):
            assert head.headers.get(name) == got.headers.get(name), (path, name)


def test_head_keeps_the_status_of_get(http, alice, bob):
    task, _ = create(http, bob)
    mine, my_etag = create(http, alice)
    cases = [(f"/api/tasks/{task['id']}", alice.headers, 403), (f"/api/tasks/{uuid.uuid4()}", alice.headers, 404),
             ("/api/tasks", {}, 401), (f"/api/{bob.id}/tasks", alice.headers, 403), ("/nope", {}, 404),
             ("/schema/nope", {}, 404), (f"/api/tasks/{mine['id']}", {**alice.headers, "If-None-Match": my_etag}, 304)]
    for path, headers, status in cases:
        got, head = http.get(path, headers=headers), http.head(path, headers=headers)
        assert got.status_code == head.status_code == status, (path, got.status_code, head.status_code)
        assert head.content == b"" and head.headers.get("content-length") == got.headers.get("content-length"), path
    # A route without GET: 405, and Allow says what works.
    head = http.head(f"/api/tasks/{mine['id']}/toggle", headers=alice.headers)
    assert head.status_code == 405 and head.content == b""
    assert "HEAD" not in head.headers["allow"] and "PATCH" in head.headers["allow"]


def test_head_is_logged_as_head(http, server, alice):
    request_id = f"head-{uuid.uuid4().hex}"
    http.head("/api/tasks", headers={**alice.headers, "X-Request-ID": request_id})
    line = next(line for line in server.log().splitlines() if request_id in line)
    assert '"method":"HEAD"' in line and '"route":"/api/tasks"' in line and '"status":200' in line


@pytest.mark.parametrize("method, path", [("POST", "/health"), ("PUT", "/api/tasks"), ("DELETE", "/ready"),
                                          ("OPTIONS", "/api/tasks"), ("OPTIONS", "/health")])
def test_allow_names_head_wherever_it_names_get(http, alice, method, path):
    response = http.request(method, path, headers=alice.headers)
    allowed = {m.strip() for m in response.headers["allow"].split(",")}
    assert {"GET", "HEAD"} <= allowed, allowed
    if method != "OPTIONS":
        assert_error(response, 405, "method_not_allowed")


@pytest.mark.parametrize("path", ["/schema/nope", "/schema/nope.json", "/schema/swagger", "/schema/redoc", "/nope",
                                  "/api/tasks/x/y/z"])
def test_unknown_paths_are_json_404(http, alice, path):
    assert_error(http.get(path, headers=alice.headers), 404, "not_found")


def test_the_schema_path_serves_the_offline_docs_page_and_the_document(http):
    """/schema is the one docs page (issue #14: its assets served by the API, tests/test_docs_page.py)."""
    assert http.get("/schema/openapi.json").json()["openapi"].startswith("3.1")
    for path in ("/schema", "/schema/"):
        response = http.get(path)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
        assert "https://" not in response.text and "http://" not in response.text


# --- CORS --------------------------------------------------------------------------------------------

EXPOSED = {"etag", "location", "x-request-id", "retry-after", "link"}


def test_cors_preflight_allows_the_conditional_and_retry_headers(http):
    for method in ("HEAD", "PATCH", "POST", "DELETE"):
        response = http.options("/api/tasks/x", headers={
            "Origin": CORS_ORIGIN, "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization, content-type, if-match, if-none-match, idempotency-key, "
                                              "x-request-id"})
        assert response.status_code in (200, 204), response.text
        assert response.headers["access-control-allow-origin"] == CORS_ORIGIN
        allowed = {h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")}
        assert {"authorization", "content-type", "if-match", "if-none-match", "idempotency-key",
                "x-request-id"} <= allowed
        assert method in {m.strip() for m in response.headers["access-control-allow-methods"].split(",")}


def test_cors_exposes_exactly_the_headers_that_exist(http, alice):
    task, _ = create(http, alice)
    responses = [
        http.get(f"/api/tasks/{task['id']}", headers={**alice.headers, "Origin": CORS_ORIGIN}),
        http.patch(f"/api/tasks/{task['id']}", json={"title": "x"},
                   headers={**alice.headers, "Origin": CORS_ORIGIN, "If-Match": '"stale"'}),
        http.get("/api/tasks", headers={**alice.headers, "Origin": CORS_ORIGIN}),
    ]
    assert [r.status_code for r in responses] == [200, 412, 200]
    for response in responses:
        assert response.headers["access-control-allow-origin"] == CORS_ORIGIN
        exposed = {h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")}
        assert exposed == EXPOSED
        assert response.headers["etag"]


# --- OpenAPI -----------------------------------------------------------------------------------------

def test_openapi_declares_the_conditional_headers_and_responses(http):
    paths = http.get("/schema/openapi.json").json()["paths"]
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}

    def headers_in(operation):
        return {p["name"] for p in operation.get("parameters", []) if p["in"] == "header"}

    for prefix, flip in (("/api", "toggle"), ("/api/{user_id}", "complete")):
        one, toggle = f"{prefix}/tasks/{{task_id}}", f"{prefix}/tasks/{{task_id}}/{flip}"
        writes = [paths[one]["put"], paths[one]["patch"], paths[one]["delete"], paths[toggle]["patch"]]
        for operation in writes:
            assert "If-Match" in headers_in(operation)
            assert operation["responses"]["412"]["content"]["application/json"]["schema"] == error_ref
            assert operation["responses"]["412"]["headers"]["ETag"]["required"] is True
        for operation in (paths[one]["get"], paths[f"{prefix}/tasks"]["get"]):
            assert "If-None-Match" in headers_in(operation)
            assert "content" not in operation["responses"]["304"]
            assert "ETag" in operation["responses"]["304"]["headers"]
            assert "ETag" in operation["responses"]["200"]["headers"]
        assert "Link" in paths[f"{prefix}/tasks"]["get"]["responses"]["200"]["headers"]
        create = paths[f"{prefix}/tasks"]["post"]
        assert "Idempotency-Key" in headers_in(create)
        assert {"Location", "ETag"} <= set(create["responses"]["201"]["headers"])
        for status in ("409", "422"):
            assert create["responses"][status]["content"]["application/json"]["schema"] == error_ref
        assert "Retry-After" in create["responses"]["409"]["headers"]
