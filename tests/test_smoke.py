from conftest import make_user


def test_create_then_list(http):
    user = make_user()
    created = http.post("/api/tasks", json={"title": "first"}, headers=user.headers)
    assert created.status_code == 201, created.text
    listed = http.get("/api/tasks", headers=user.headers).json()
    assert listed["total_count"] == 1
    assert listed["tasks"][0]["id"] == created.json()["id"]
