"""Issue #14.1: an OpenAPI 3.1 document a client generator can trust, and a person can read.

Read from the running server (/schema/openapi.json), as a generator would. Whether the server then
answers as the document says is schemathesis's job (tests/test_fuzz.py) and the TypeScript client's
(clients/typescript/run); these tests check the document itself: stable operationIds, formats,
headers, statuses, readable descriptions, and an example for every body that validates against
its own schema.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import jsonschema_rs
import pytest

from api import document as doc_tables

OPERATION_IDS = {
    ("get", "/api/tasks"): "listTasks",
    ("post", "/api/tasks"): "createTask",
    ("delete", "/api/tasks"): "clearCompletedTasks",
    ("get", "/api/tasks/{task_id}"): "getTask",
    ("put", "/api/tasks/{task_id}"): "replaceTask",
    ("patch", "/api/tasks/{task_id}"): "updateTask",
    ("delete", "/api/tasks/{task_id}"): "deleteTask",
    ("patch", "/api/tasks/{task_id}/toggle"): "toggleTask",
    ("get", "/api/tags"): "listTags",
    ("get", "/api/{user_id}/tasks"): "listTasksByUserId",
    ("post", "/api/{user_id}/tasks"): "createTaskByUserId",
    ("delete", "/api/{user_id}/tasks"): "clearCompletedTasksByUserId",
    ("get", "/api/{user_id}/tasks/{task_id}"): "getTaskByUserId",
    ("put", "/api/{user_id}/tasks/{task_id}"): "replaceTaskByUserId",
    ("patch", "/api/{user_id}/tasks/{task_id}"): "updateTaskByUserId",
    ("delete", "/api/{user_id}/tasks/{task_id}"): "deleteTaskByUserId",
    ("patch", "/api/{user_id}/tasks/{task_id}/complete"): "toggleTaskByUserId",
    ("get", "/api/{user_id}/tags"): "listTagsByUserId",
    ("get", "/health"): "getHealth",
    ("get", "/ready"): "getReady",
}
# What Litestar writes when nobody says anything better.
BOILERPLATE = ("Request fulfilled, document follows", "Document created, URL follows", "Additional Information",
               "No Content", "Success")
BODY_OPERATIONS = {"createTask", "replaceTask", "updateTask"}
ETAG_OPERATIONS = {"listTasks", "createTask", "getTask", "replaceTask", "updateTask", "toggleTask"}


@pytest.fixture(scope="module")
def spec(http) -> dict:
    response = http.get("/schema/openapi.json")
    assert response.status_code == 200
    return response.json()


def operations(spec: dict) -> Iterator[tuple[str, str, dict]]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if isinstance(operation, dict) and "responses" in operation:
                yield method, path, operation


def base_id(operation: dict) -> str:
    return operation["operationId"].removesuffix("ByUserId")


def resolve(spec: dict, node: dict) -> dict:
    while "$ref" in node:
        _, *parts = node["$ref"].split("/")
        node = spec
        for part in parts:
            node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def validator(spec: dict, schema: dict) -> jsonschema_rs.Draft202012Validator:
    """`schema` with the document's components at its root, so that its `#/components/...` references resolve."""
    return jsonschema_rs.Draft202012Validator({**copy.deepcopy(schema), "components": spec["components"]},
                                              validate_formats=True)


def test_every_operation_has_its_stable_id(spec):
    found = {(method, path): operation["operationId"] for method, path, operation in operations(spec)}
    assert found == OPERATION_IDS


def test_ids_are_uuids_and_timestamps_date_times(spec):
    task = spec["components"]["schemas"]["Task"]["properties"]
    assert task["id"]["format"] == "uuid"
    assert {"type": "string", "format": "uuid"} in task["next_task_id"]["oneOf"]
    for name in ("created_at", "updated_at"):
        assert task[name]["format"] == "date-time", name
    assert any(option.get("format") == "date-time" for option in task["due_at"]["oneOf"])
    for method, path, operation in operations(spec):
        for parameter in operation.get("parameters", []):
            if parameter["name"] == "task_id":
                assert parameter["in"] == "path" and parameter["schema"]["format"] == "uuid", (method, path)
            if parameter["name"] in ("due_before", "due_after"):
                assert parameter["schema"]["format"] == "date-time", (method, path)
        if "requestBody" in operation:
            due_at = operation["requestBody"]["content"]["application/json"]["schema"]["properties"]["due_at"]
            assert any(option.get("format") == "date-time" for option in due_at["anyOf"]), (method, path)


def test_every_status_an_operation_can_answer_is_documented(spec):
    for method, path, operation in operations(spec):
        statuses = {int(status) for status in operation["responses"]}
        assert {431, 500} <= statuses, (method, path)  # any request: the head's size, and any failure
        if path.startswith("/api"):
            assert {400, 401, 403, 404, 503} <= statuses, (method, path)
        if base_id(operation) in BODY_OPERATIONS:
            assert {408, 413, 415} <= statuses, (method, path)
    assert spec["paths"]["/ready"]["get"]["responses"].keys() >= {"200", "503"}
    assert "Allow" in spec["components"]["responses"]["MethodNotAllowed"]["headers"]  # 405: no operation's own


def test_every_response_declares_its_headers(spec):
    for method, path, operation in operations(spec):
        for status, response in operation["responses"].items():
            headers = response["headers"]
            where = (method, path, status)
            assert resolve(spec, headers["X-Request-ID"])["required"] is True, where
            if status == "401":
                assert resolve(spec, headers["WWW-Authenticate"])["required"] is True, where
            if status in ("409", "503"):
                assert resolve(spec, headers["Retry-After"])["required"] is True, where
            if status == "201":
                assert resolve(spec, headers["Location"])["required"] is True, where
            if status.startswith("2") and base_id(operation) in ETAG_OPERATIONS:
                assert resolve(spec, headers["ETag"])["required"] is True, where
            if status == "200" and base_id(operation) == "listTasks":
                assert "Link" in headers, where


def test_descriptions_are_written_for_people(spec):
    assert spec["info"]["description"] and all(tag["description"] for tag in spec["tags"])
    for method, path, operation in operations(spec):
        assert operation["summary"] and len(operation["description"]) > 30, (method, path)
        for status, response in operation["responses"].items():
            assert response["description"] and response["description"] not in BOILERPLATE, (method, path, status)
        for parameter in operation.get("parameters", []):
            assert parameter.get("description"), (method, path, parameter["name"])
        if "requestBody" in operation:
            properties = operation["requestBody"]["content"]["application/json"]["schema"]["properties"]
            # the machine-checkable rule stays, and a person reads the description next to it
            assert properties["title"]["pattern"] and "255 characters" in properties["title"]["description"]
            assert "50 characters" in properties["tags"]["items"]["description"]


def test_every_body_has_an_example_that_its_schema_accepts(spec):
    checked = 0
    for method, path, operation in operations(spec):
        if "requestBody" in operation:
            media = operation["requestBody"]["content"]["application/json"]
            check = validator(spec, media["schema"])
            assert media["examples"], (method, path)
            for name, example in media["examples"].items():
                assert check.is_valid(example["value"]), (method, path, name)
                checked += 1
        for status, response in operation["responses"].items():
            for media_type, media in response.get("content", {}).items():
                assert "example" in media, (method, path, status, media_type)
                assert validator(spec, media["schema"]).is_valid(media["example"]), (method, path, status)
                checked += 1
            for name, header in response["headers"].items():
                header = resolve(spec, header)
                assert validator(spec, header["schema"]).is_valid(header["example"]), (method, path, status, name)
        for parameter in operation.get("parameters", []):
            if "example" in parameter:
                assert validator(spec, parameter["schema"]).is_valid(parameter["example"]), (method, path)
    for name, schema in spec["components"]["schemas"].items():
        assert "example" in schema, name
        assert validator(spec, schema).is_valid(schema["example"]), name
    assert checked > 150  # 20 operations, most with 8 to 11 bodies


def test_an_example_that_breaks_its_schema_is_caught(spec):
    """The check above can fail: a task whose timestamp is not a date-time is refused."""
    task = {**spec["components"]["schemas"]["Task"]["example"], "created_at": "yesterday"}
    assert not validator(spec, {"$ref": "#/components/schemas/Task"}).is_valid(task)


def test_a_route_the_tables_do_not_describe_stops_the_document():
    generated = {"info": {}, "components": {"schemas": {"Task": {}}},
                 "paths": {"/api/archive": {"get": {"responses": {"200": {}}}}}}
    with pytest.raises(KeyError):
        doc_tables.finish(generated)
