"""taskapi_audit.findings(), `taskapi audit` and the posture guard of the running API (issues #4, #9).

Every check of findings() is broken here the way a careless operator would break it, in a database
of its own; the finding must appear by name and go away after `taskapi migrate` or the revert. Roles
are cluster-wide, so a change to a role is made on a server this session started (`private_database`)
and checked inside one transaction that is rolled back; one test commits such a change to prove that
migrate repairs it, and undoes it in a `finally`. The attacker's weakenings of issue #9, with the
running API, are in tests/test_allow_list.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from api.errors import ServiceUnavailable, from_database
from api.migrate import migrate
from api.pipeline import Statement
from api.posture import FINDINGS_UNAVAILABLE, PostureGuard
from api.posture import LIST_FINDINGS as GUARD_QUERY
from conftest import ROOT, Database, Server, cluster_change, make_user, server_env
from test_allow_list import WEAKENINGS

LIST_FINDINGS = 'SELECT "check", severity, object FROM taskapi_audit.findings()'
POSTURE_CHECK_S = 0.5
# "Within two checks" (each may use its 2 s statement timeout), plus room for a loaded machine.
TWO_CHECKS_S = 2 * (POSTURE_CHECK_S + 2) + 10


def findings(dsn: str) -> set[tuple[str, str, str]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return set(conn.execute(LIST_FINDINGS).fetchall())


def run_sql(dsn: str, statement: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement)


@dataclass(frozen=True)
class Break:
    """A careless change, the finding it must raise, and how it is undone."""

    check: str
    severity: str
    object: str
    breaks: str
    revert: str | None = None  # None: `taskapi migrate` must repair it

    def __str__(self) -> str:
        return self.check


# Changes to the database's own objects: committed in a scratch database, then repaired.
DATABASE_BREAKS = [
    Break("rls_disabled", "error", "taskapi.tasks", "ALTER TABLE taskapi.tasks DISABLE ROW LEVEL SECURITY"),
    Break("rls_not_forced", "error", "taskapi.tasks", "ALTER TABLE taskapi.tasks NO FORCE ROW LEVEL SECURITY"),
    Break("policy_missing_for_command", "warning", "taskapi.tasks", "DROP POLICY tasks_delete ON taskapi.tasks"),
    Break("policy_applies_to_public", "error", "tasks_select ON taskapi.tasks",
          "ALTER POLICY tasks_select ON taskapi.tasks TO PUBLIC"),
    Break("policy_always_true", "error", "tasks_support_view ON taskapi.tasks",
          "CREATE POLICY tasks_support_view ON taskapi.tasks FOR SELECT TO taskapi_app USING (true)"),
    Break("policy_ignores_identity", "error", "tasks_done_visible ON taskapi.tasks",
          "CREATE POLICY tasks_done_visible ON taskapi.tasks FOR SELECT TO taskapi_app USING (completed)"),
    Break("policy_without_with_check", "warning", "tasks_update ON taskapi.tasks",
          "DROP POLICY tasks_update ON taskapi.tasks;"
          " CREATE POLICY tasks_update ON taskapi.tasks FOR UPDATE TO taskapi_app"
          " USING (user_id = (SELECT taskapi.current_user_id()))"),
    Break("identity_not_initplan", "warning", "tasks_select ON taskapi.tasks",
          "ALTER POLICY tasks_select ON taskapi.tasks USING (user_id = taskapi.current_user_id())"),
    Break("runtime_role_owns_objects", "error", "table taskapi.tasks",
          "ALTER TABLE taskapi.tasks OWNER TO taskapi_app"),
    Break("runtime_role_dangerous_privilege", "error", "taskapi.tasks",
          "GRANT TRUNCATE ON taskapi.tasks TO taskapi_app"),
    Break("runtime_role_can_create", "error", "SCHEMA taskapi", "GRANT CREATE ON SCHEMA taskapi TO taskapi_app"),
    Break("auditor_can_write", "error", "taskapi.tasks",
          "GRANT INSERT, UPDATE, DELETE ON taskapi.tasks TO taskapi_auditor"),
    Break("role_can_create_in_other_schema", "warning", "SCHEMA public",
          "GRANT CREATE ON SCHEMA public TO taskapi_app", revert="REVOKE CREATE ON SCHEMA public FROM taskapi_app"),
    Break("security_definer_not_allowed", "error", "taskapi.count_tasks()",
          "CREATE FUNCTION taskapi.count_tasks() RETURNS bigint LANGUAGE sql SECURITY DEFINER"
          " SET search_path = pg_catalog AS 'SELECT count(*) FROM taskapi.tasks';"
          " ALTER FUNCTION taskapi.count_tasks() OWNER TO taskapi_owner",
          revert="DROP FUNCTION taskapi.count_tasks()"),
    Break("security_definer_search_path_mutable", "error", "taskapi.task_exists(uuid)",
          "ALTER FUNCTION taskapi.task_exists(uuid) RESET search_path",
          revert="ALTER FUNCTION taskapi.task_exists(uuid) SET search_path = pg_catalog, pg_temp"),
    Break("view_without_security_invoker", "error", "taskapi.open_tasks",
          "CREATE VIEW taskapi.open_tasks AS SELECT * FROM taskapi.tasks WHERE NOT completed;"
          " ALTER VIEW taskapi.open_tasks OWNER TO taskapi_owner",
          revert="DROP VIEW taskapi.open_tasks"),
    Break("materialized_view_in_schema", "error", "taskapi.tasks_per_user",
          "CREATE MATERIALIZED VIEW taskapi.tasks_per_user AS SELECT user_id, count(*) FROM taskapi.tasks GROUP BY 1;"
          " ALTER MATERIALIZED VIEW taskapi.tasks_per_user OWNER TO taskapi_owner",
          revert="DROP MATERIALIZED VIEW taskapi.tasks_per_user"),
    Break("foreign_table_in_schema", "error", "taskapi.remote_tasks",
          "CREATE FOREIGN DATA WRAPPER test_fdw; CREATE SERVER test_remote FOREIGN DATA WRAPPER test_fdw;"
          " CREATE FOREIGN TABLE taskapi.remote_tasks (id uuid) SERVER test_remote;"
          " ALTER FOREIGN TABLE taskapi.remote_tasks OWNER TO taskapi_owner",
          revert="DROP SERVER test_remote CASCADE; DROP FOREIGN DATA WRAPPER test_fdw"),
    Break("object_owner_unexpected", "error", "taskapi.current_user_id()",
          "ALTER FUNCTION taskapi.current_user_id() OWNER TO CURRENT_USER"),
    Break("policy_drift", "error", "tasks_select ON taskapi.tasks",
          "ALTER POLICY tasks_select ON taskapi.tasks"
          " USING (user_id = (SELECT taskapi.current_user_id()) OR completed)"),
]

# Changes to the cluster-wide roles: made, checked and rolled back in one transaction.
ROLE_BREAKS = [
    Break("role_missing", "error", "taskapi_auditor", "ALTER ROLE taskapi_auditor RENAME TO taskapi_auditor_gone"),
    Break("runtime_role_superuser", "error", "taskapi_app", "ALTER ROLE taskapi_app SUPERUSER"),
    Break("runtime_role_bypassrls", "error", "taskapi_app", "ALTER ROLE taskapi_app BYPASSRLS"),
    Break("runtime_role_member_of_privileged_role", "error", "taskapi_app", "GRANT taskapi_owner TO taskapi_app"),
    Break("auditor_bypassrls", "error", "taskapi_auditor", "ALTER ROLE taskapi_auditor BYPASSRLS"),
]


def declared_checks() -> set[str]:
    """Every check name findings() can return, read from the migration that last defined it."""
    source = (ROOT / "sql" / "migrations" / "0003_manifest.sql").read_text()
    findings_source = source[source.index("CREATE OR REPLACE FUNCTION taskapi_audit.findings()"):]
    named = set(re.findall(r"'([a-z][a-z_]+)', '(?:error|warning)'", findings_source))
    named |= set(re.findall(r"THEN '([a-z_]+)'\s+ELSE '([a-z_]+)' END,\s+'error'", findings_source)[0])
    manifest_source = source[source.index("CREATE FUNCTION taskapi_audit.live_manifest()"):
                             source.index("CREATE OR REPLACE FUNCTION taskapi_audit.findings()")]
    kinds = set(re.findall(r"^SELECT '([a-z_]+)'", manifest_source, re.MULTILINE))
    return named | {f"{kind}_drift" for kind in kinds}


def test_every_check_of_findings_is_broken_by_a_test():
    tested = {b.check for b in DATABASE_BREAKS + ROLE_BREAKS} | {w.check for w in WEAKENINGS}
    declared = declared_checks()
    assert {"function_drift", "membership_drift", "outside_dependent", "security_definer_reachable",
            "auditor_member_of_privileged_role"} <= declared  # the parsing above found them
    assert declared == tested


def test_a_fresh_database_has_no_findings(database: Database):
    assert findings(database.auditor_dsn) == set()
    assert findings(database.app_dsn) == set()


def test_the_auditor_reads_tables_and_policies(database: Database):
    with psycopg.connect(database.auditor_dsn, autocommit=True) as conn:
        tables = conn.execute("SELECT table_name, rls_enabled, rls_forced, owner, policy_count"
                              " FROM taskapi_audit.tables").fetchall()
        policies = conn.execute("SELECT policy_name, command, roles, using_expr, with_check_expr"
                                " FROM taskapi_audit.policies").fetchall()
    assert tables == [("taskapi.idempotency_keys", True, True, "taskapi_owner", 3),
                      ("taskapi.task_counts", True, True, "taskapi_owner", 3),
                      ("taskapi.tasks", True, True, "taskapi_owner", 5)]
    identity = "(user_id = ( SELECT taskapi.current_user_id() AS current_user_id))"
    assert policies == [
        ("idempotency_keys_delete_expired", "DELETE", ["taskapi_app"],
         "((user_id = ( SELECT taskapi.current_user_id() AS current_user_id)) AND (expires_at <= now()))", None),
        ("idempotency_keys_insert", "INSERT", ["taskapi_app"], None, identity),
        ("idempotency_keys_select", "SELECT", ["taskapi_app", "taskapi_auditor"], identity, None),
        ("task_counts_insert", "INSERT", ["taskapi_app"], None, identity),
        ("task_counts_select", "SELECT", ["taskapi_app", "taskapi_auditor"], identity, None),
        ("task_counts_update", "UPDATE", ["taskapi_app"], identity, identity),
        ("tasks_delete", "DELETE", ["taskapi_app"], identity, None),
        ("tasks_insert", "INSERT", ["taskapi_app"], None, identity),
        ("tasks_owner_task_exists", "SELECT", ["taskapi_owner"], "true", None),
        ("tasks_select", "SELECT", ["taskapi_app", "taskapi_auditor"], identity, None),
        ("tasks_update", "UPDATE", ["taskapi_app"], identity, identity),
    ]


@pytest.mark.parametrize("case", DATABASE_BREAKS, ids=str)
def test_a_careless_change_is_found_then_repaired(case: Break, scratch_database: Database):
    run_sql(scratch_database.admin_dsn, case.breaks)
    assert (case.check, case.severity, case.object) in findings(scratch_database.auditor_dsn)
    if case.revert is None:
        migrate(scratch_database.admin_dsn)
    else:
        run_sql(scratch_database.admin_dsn, case.revert)
    assert findings(scratch_database.auditor_dsn) == set()


@pytest.mark.parametrize("case", ROLE_BREAKS, ids=str)
def test_a_careless_role_change_is_found(case: Break, private_database: Database):
    with psycopg.connect(private_database.admin_dsn) as conn:
        try:
            conn.execute(case.breaks)
            assert (case.check, case.severity, case.object) in set(conn.execute(LIST_FINDINGS).fetchall())
        finally:
            conn.rollback()
        assert set(conn.execute(LIST_FINDINGS).fetchall()) == set()


def test_migrate_repairs_a_role_given_bypassrls(private_database: Database):
    with cluster_change(private_database.admin_dsn, "ALTER ROLE taskapi_app BYPASSRLS",
                        "ALTER ROLE taskapi_app NOBYPASSRLS"):
        assert ("runtime_role_bypassrls", "error", "taskapi_app") in findings(private_database.auditor_dsn)
        # The role is shared with the session's other databases: migrate changes it only when allowed.
        report = migrate(private_database.admin_dsn, allow_shared_role_changes=True)
        assert report.roles_fixed == ["taskapi_app: NOBYPASSRLS"]
        assert findings(private_database.auditor_dsn) == set()


def test_a_policy_edited_by_hand_is_only_caught_as_drift(scratch_database: Database):
    # Still scoped to the caller, still through (select ...): no static check objects, the record does.
    run_sql(scratch_database.admin_dsn, DATABASE_BREAKS[-1].breaks)
    assert {check for check, _, _ in findings(scratch_database.auditor_dsn)} == {"policy_drift"}


def test_migrate_records_where_each_policy_came_from(database: Database):
    with psycopg.connect(database.auditor_dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT policy_name, source_file, length(source_sha256)"
                            " FROM taskapi_audit.applied_policies ORDER BY 1").fetchall()
    assert [name for name, _, _ in rows] == [
        "idempotency_keys_delete_expired", "idempotency_keys_insert", "idempotency_keys_select",
        "task_counts_insert", "task_counts_select", "task_counts_update",
        "tasks_delete", "tasks_insert", "tasks_owner_task_exists", "tasks_select", "tasks_update"]
    for name, source, digest in rows:  # each policy from its table's file, with the file's SHA-256
        table = next(t for t in ("idempotency_keys", "task_counts", "tasks") if name.startswith(f"{t}_"))
        assert (source, digest) == (f"sql/policies/{table}.sql", 64), name


# `taskapi audit`, run as operators run it.

def run_audit(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_ADMIN_URL", "DATABASE_AUDITOR_URL")}
    return subprocess.run([sys.executable, "-m", "api.cli", "audit", *args], env={**base, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_audit_passes_on_a_fresh_database(database: Database):
    result = run_audit(DATABASE_ADMIN_URL=database.admin_dsn)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "findings: none" in result.stdout
    assert "FAIL" not in result.stdout
    assert "result: PASS" in result.stdout
    report = json.loads(run_audit("--json", DATABASE_ADMIN_URL=database.admin_dsn).stdout)
    assert report["ok"] is True and report["findings"] == [] and report["probe"]["ran"] is True
    assert len(report["probe"]["steps"]) >= 20
    assert {step["status"] for step in report["probe"]["steps"]} == {"ok"}


def test_audit_with_the_auditor_dsn_says_the_probe_was_skipped(database: Database):
    result = run_audit(DATABASE_AUDITOR_URL=database.auditor_dsn)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "active probe: SKIPPED: role taskapi_auditor cannot SET ROLE taskapi_app" in result.stdout
    assert "result: PASS (findings only: the active probe did not run)" in result.stdout


def test_audit_fails_on_a_finding(scratch_database: Database):
    run_sql(scratch_database.admin_dsn, "ALTER TABLE taskapi.tasks NO FORCE ROW LEVEL SECURITY")
    result = run_audit("--json", "--dsn", scratch_database.auditor_dsn)
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    # The specific check says why it matters; the manifest, that the table changed since migrate ran.
    assert [(f["check"], f["object"]) for f in report["findings"]] == [
        ("relation_drift", "table taskapi.tasks"), ("rls_not_forced", "taskapi.tasks")]
    text = run_audit("--dsn", scratch_database.auditor_dsn).stdout
    assert re.search(r"error\s+rls_not_forced\s+taskapi\.tasks", text)
    assert "fix: ALTER TABLE taskapi.tasks FORCE ROW LEVEL SECURITY" in text


def test_findings_and_the_probe_both_catch_a_replaced_identity_function(scratch_database: Database):
    # An identity function that ignores the claims: every policy still reads right, and every user
    # shares every task. The manifest sees its body change; writing as the runtime role shows the effect.
    run_sql(scratch_database.admin_dsn, """
        CREATE OR REPLACE FUNCTION taskapi.current_user_id() RETURNS text
            LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$ SELECT 'everyone' $$""")
    assert ("function_drift", "error", "function taskapi.current_user_id()") in findings(scratch_database.auditor_dsn)
    result = run_audit("--json", DATABASE_ADMIN_URL=scratch_database.admin_dsn)
    assert result.returncode == 1, result.stdout + result.stderr
    failed = {s["name"] for s in json.loads(result.stdout)["probe"]["steps"] if s["status"] == "FAIL"}
    assert "user A sees its own task and no other row" in failed
    assert "user A cannot update user B's task" in failed


def test_the_probe_leaves_nothing_behind(database: Database):
    assert run_audit(DATABASE_ADMIN_URL=database.admin_dsn).returncode == 0
    with psycopg.connect(database.admin_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM taskapi.tasks WHERE user_id LIKE 'taskapi-audit-probe-%'"
                            " OR title = 'taskapi audit probe'").fetchone()[0] == 0


def test_audit_without_a_dsn_is_a_usage_error():
    result = run_audit()
    assert result.returncode == 2
    assert "DATABASE_ADMIN_URL" in result.stderr


# The posture guard, in a server of its own that checks every POSTURE_CHECK_S seconds.

def wait_for(predicate, timeout_s: float) -> float:
    """Seconds until `predicate()` held; fails after `timeout_s`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.05)  # polling the server's state, not synchronising the test itself
    raise AssertionError(f"not within {timeout_s}s")


@pytest.fixture
def guarded_server(scratch_database: Database, tmp_path: Path):
    srv = Server(env=server_env(scratch_database, POSTURE_CHECK_S=str(POSTURE_CHECK_S)),
                 log_path=tmp_path / "serve.log")
    yield srv
    srv.stop()


@pytest.mark.slow
def test_the_guard_closes_within_two_checks_and_reopens(guarded_server: Server, scratch_database: Database):
    srv = guarded_server.start()
    user = make_user()
    with httpx.Client(base_url=srv.base_url, timeout=5) as http:
        # Closed until its first check completes, which on a loaded machine may take a retry.
        wait_for(lambda: http.get("/ready").status_code == 200, TWO_CHECKS_S)
        assert http.get("/api/tasks", headers=user.headers).status_code == 200

        run_sql(scratch_database.admin_dsn, "ALTER TABLE taskapi.tasks NO FORCE ROW LEVEL SECURITY")
        # Within two checks (each may use its 2 s timeout), plus room for a loaded machine.
        wait_for(lambda: http.get("/ready").status_code == 503, TWO_CHECKS_S)
        ready = http.get("/ready")
        assert ready.json()["error"] == "service_unavailable"
        assert ready.json()["checks"] == ["relation_drift", "rls_not_forced"]
        assert ready.headers["Retry-After"] == "1"
        for response in (http.get("/api/tasks", headers=user.headers),
                         http.post("/api/tasks", json={"title": "x"}, headers=user.headers),
                         http.get(f"/api/{user.id}/tasks", headers=user.headers),
                         http.get("/api/tasks")):  # before authentication: nothing is served at all
            assert response.status_code == 503
            assert response.json()["error"] == "service_unavailable"
            assert set(response.json()) == {"error", "message"}
            assert response.headers["Retry-After"] == "1"
        assert http.get("/health").status_code == 200

        migrate(scratch_database.admin_dsn)
        wait_for(lambda: http.get("/ready").status_code == 200, TWO_CHECKS_S)
        assert http.get("/ready").json() == {"status": "ready"}
        assert http.get("/api/tasks", headers=user.headers).status_code == 200
    assert "isolation posture broken" in srv.log() and "rls_not_forced (taskapi.tasks)" in srv.log()


@pytest.mark.slow
def test_the_guard_closes_before_the_first_request(guarded_server: Server, scratch_database: Database):
    run_sql(scratch_database.admin_dsn, "GRANT TRUNCATE ON taskapi.tasks TO taskapi_app")
    srv = guarded_server.start()
    with httpx.Client(base_url=srv.base_url, timeout=5) as http:
        assert http.get("/api/tasks", headers=make_user().headers).status_code == 503
        assert http.get("/ready").json()["checks"] == ["relation_drift", "runtime_role_dangerous_privilege"]


@pytest.mark.slow
def test_the_guard_closes_when_findings_is_refused(guarded_server: Server, scratch_database: Database):
    srv = guarded_server.start()
    with httpx.Client(base_url=srv.base_url, timeout=5) as http:
        run_sql(scratch_database.admin_dsn, "REVOKE EXECUTE ON FUNCTION taskapi_audit.findings() FROM taskapi_app")
        wait_for(lambda: http.get("/ready").status_code == 503, TWO_CHECKS_S)
        assert http.get("/ready").json()["checks"] == [FINDINGS_UNAVAILABLE]
        run_sql(scratch_database.admin_dsn, "GRANT EXECUTE ON FUNCTION taskapi_audit.findings() TO taskapi_app")
        wait_for(lambda: http.get("/ready").status_code == 200, TWO_CHECKS_S)


def test_openapi_documents_the_checks_of_ready(http: httpx.Client):
    spec = http.get("/schema/openapi.json").json()
    response = spec["paths"]["/ready"]["get"]["responses"]["503"]
    assert "checks" in response["description"]
    schema_ref = response["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    assert "checks" in spec["components"]["schemas"][schema_ref]["properties"]


# The guard's verdict, without a server.

class FakeDatabase:
    """Answers `findings()` with rows, or fails the way the pool does (an ApiError from a driver error)."""

    def __init__(self) -> None:
        self.answer: list[tuple[str, str, str]] | psycopg.Error = []
        self.timeouts: list[int | None] = []

    async def fetch_all(self, user_id: str | None, statement: Statement, params: dict[str, object], *,
                        statement_timeout_ms: int | None = None) -> list[tuple[bytes | None, ...]]:
        assert user_id is None and statement is GUARD_QUERY
        self.timeouts.append(statement_timeout_ms)
        if isinstance(self.answer, psycopg.Error):
            raise from_database(self.answer) from self.answer
        return [tuple(value.encode() for value in row) for row in self.answer]


def verdicts(guard: PostureGuard, db: FakeDatabase, answers: list) -> list[tuple[str, ...]]:
    async def scenario() -> list[tuple[str, ...]]:
        seen = []
        for answer in answers:
            db.answer = answer
            await guard.check(db)  # type: ignore[arg-type]
            seen.append(guard.failing)
        return seen

    return asyncio.run(scenario())


def test_the_guard_keeps_its_verdict_for_one_failed_check():
    guard, db = PostureGuard(60), FakeDatabase()
    assert verdicts(guard, db, [
        [], psycopg.OperationalError("connection refused"),
        [("rls_disabled", "error", "taskapi.tasks"), ("identity_not_initplan", "warning", "p")],
        psycopg.errors.AdminShutdown("terminating connection"),
        [("identity_not_initplan", "warning", "p")],
        psycopg.errors.UndefinedFunction("function taskapi_audit.findings() does not exist"),
    ]) == [
        (), (),  # one failed check after a sound one: still open, the next check decides
        ("rls_disabled",), ("rls_disabled",),  # and after an error, still closed
        (),  # warnings never close it
        (FINDINGS_UNAVAILABLE,),  # findings() gone: the guard is blind, so it closes at once
    ]
    assert guard.retry_after == "60"
    assert isinstance(from_database(psycopg.OperationalError()), ServiceUnavailable)


def test_the_guard_closes_after_two_failed_checks_in_a_row():
    guard, db = PostureGuard(2), FakeDatabase()
    assert guard.closed and guard.failing == (FINDINGS_UNAVAILABLE,)  # nobody has looked yet
    cancelled = psycopg.errors.QueryCanceled("canceling statement due to statement timeout")
    lock = psycopg.errors.LockNotAvailable("could not obtain lock")
    assert verdicts(guard, db, [[], cancelled, cancelled, cancelled, [], lock, [], lock, lock]) == [
        (), (), (FINDINGS_UNAVAILABLE,), (FINDINGS_UNAVAILABLE,), (), (), (), (), (FINDINGS_UNAVAILABLE,)]
    # Each check may take one interval (2 s at least), so a blocked one cannot hold the verdict for long.
    assert set(db.timeouts) == {2000}
    assert PostureGuard(10).timeout_ms == 5000 and PostureGuard(3).timeout_ms == 3000


def test_the_first_failed_check_at_start_leaves_the_guard_closed():
    guard, db = PostureGuard(2), FakeDatabase()
    assert verdicts(guard, db, [psycopg.OperationalError("connection refused"), []]) == [
        (FINDINGS_UNAVAILABLE,), ()]
