"""`taskapi migrate`: idempotent, owner-owned objects, policies re-applied, posture repaired."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg

from api.migrate import migrate
from conftest import APP_PASSWORD, AUDITOR_PASSWORD, ROOT, cluster_change

EXPECTED_POLICIES = {
    ("tasks_select", "SELECT", "{taskapi_app,taskapi_auditor}"),
    ("tasks_insert", "INSERT", "{taskapi_app}"),
    ("tasks_update", "UPDATE", "{taskapi_app}"),
    ("tasks_delete", "DELETE", "{taskapi_app}"),
    ("tasks_owner_task_exists", "SELECT", "{taskapi_owner}"),
    ("task_counts_select", "SELECT", "{taskapi_app,taskapi_auditor}"),
    ("task_counts_insert", "INSERT", "{taskapi_app}"),
    ("task_counts_update", "UPDATE", "{taskapi_app}"),
}


def policies(dsn: str) -> set[tuple[str, str, str]]:
    with psycopg.connect(dsn) as conn:
        return {(name, cmd, roles) for name, cmd, roles in conn.execute(
            "SELECT policyname, cmd, roles::text FROM pg_policies WHERE schemaname = 'taskapi'").fetchall()}


def test_migrate_twice_is_a_no_op_the_second_time(scratch_database):
    report = migrate(scratch_database.admin_dsn, app_password=APP_PASSWORD, auditor_password=AUDITOR_PASSWORD)
    assert report.migrations_applied == []
    assert report.roles_created == [] and report.roles_fixed == []
    assert report.policy_files == ["task_counts.sql", "tasks.sql"]
    assert policies(scratch_database.admin_dsn) == EXPECTED_POLICIES


def test_everything_in_the_schema_is_owned_by_the_owner(scratch_database):
    with psycopg.connect(scratch_database.admin_dsn) as conn:
        owners = conn.execute("""
            SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class WHERE relnamespace = 'taskapi'::regnamespace
            UNION SELECT DISTINCT pg_get_userbyid(proowner) FROM pg_proc WHERE pronamespace = 'taskapi'::regnamespace
            UNION SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'taskapi'
        """).fetchall()
        assert owners == [("taskapi_owner",)]
        roles = dict(conn.execute("SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname IN "
                                  "('taskapi_owner', 'taskapi_app', 'taskapi_auditor')").fetchall())
        assert roles == {"taskapi_owner": False, "taskapi_app": True, "taskapi_auditor": True}
        definer = conn.execute("SELECT prosecdef, proconfig FROM pg_proc WHERE oid = 'taskapi.task_exists'::regproc"
                               ).fetchone()
        assert definer[0] is True and any(c.startswith("search_path=") for c in definer[1])


def test_hand_made_policy_and_grants_do_not_survive_migrate(scratch_database):
    with psycopg.connect(scratch_database.admin_dsn, autocommit=True) as conn:
        conn.execute("CREATE POLICY oops ON taskapi.tasks FOR SELECT TO taskapi_app USING (true)")
        conn.execute("ALTER POLICY tasks_delete ON taskapi.tasks USING (true)")
        conn.execute("GRANT TRUNCATE ON taskapi.tasks TO taskapi_app")
        conn.execute("ALTER TABLE taskapi.tasks NO FORCE ROW LEVEL SECURITY")
    migrate(scratch_database.admin_dsn)
    assert policies(scratch_database.admin_dsn) == EXPECTED_POLICIES
    with psycopg.connect(scratch_database.admin_dsn) as conn:
        assert conn.execute("SELECT has_table_privilege('taskapi_app', 'taskapi.tasks', 'TRUNCATE')").fetchone()[0] \
            is False
        assert conn.execute("SELECT relforcerowsecurity FROM pg_class WHERE oid = 'taskapi.tasks'::regclass"
                            ).fetchone()[0] is True
        qual = conn.execute("SELECT qual FROM pg_policies WHERE policyname = 'tasks_delete'").fetchone()[0]
        assert "current_user_id" in qual


def test_migrate_takes_back_ownership_and_membership(scratch_database):
    with psycopg.connect(scratch_database.admin_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE taskapi.tasks OWNER TO taskapi_app")
        conn.execute("GRANT taskapi_owner TO taskapi_auditor")
    try:
        report = migrate(scratch_database.admin_dsn)
        assert any("taskapi_auditor" in fix for fix in report.roles_fixed)
        with psycopg.connect(scratch_database.admin_dsn) as conn:
            assert conn.execute("SELECT pg_get_userbyid(relowner) FROM pg_class "
                                "WHERE oid = 'taskapi.tasks'::regclass").fetchone()[0] == "taskapi_owner"
            assert conn.execute("SELECT pg_has_role('taskapi_auditor', 'taskapi_owner', 'MEMBER')").fetchone()[0] \
                is False
    finally:
        with psycopg.connect(scratch_database.admin_dsn, autocommit=True) as conn:
            conn.execute("REVOKE taskapi_owner FROM taskapi_auditor")


def test_migrate_removes_bypassrls_from_the_runtime_role(scratch_database):
    with cluster_change(scratch_database.admin_dsn, "ALTER ROLE taskapi_app BYPASSRLS",
                        "ALTER ROLE taskapi_app NOBYPASSRLS"):
        report = migrate(scratch_database.admin_dsn)
        assert "taskapi_app: NOBYPASSRLS" in report.roles_fixed


def test_cli_migrate_needs_the_admin_dsn_and_is_idempotent(scratch_database):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_ADMIN_URL", "DATABASE_URL")}
    missing = subprocess.run([sys.executable, "-m", "api.cli", "migrate"], env=env, cwd=ROOT, capture_output=True,
                             text=True)
    assert missing.returncode == 2
    assert "DATABASE_ADMIN_URL" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    ok = subprocess.run([sys.executable, "-m", "api.cli", "migrate"], cwd=ROOT, capture_output=True, text=True,
                        env={**env, "DATABASE_ADMIN_URL": scratch_database.admin_dsn})
    assert ok.returncode == 0, ok.stderr
    assert "applied policies from task_counts.sql, tasks.sql" in ok.stdout


def test_migrate_into_an_empty_database_creates_everything(cluster):
    import uuid

    name = f"taskapi_empty_{uuid.uuid4().hex[:8]}"
    cluster.create_database(name)
    try:
        report = migrate(cluster.dsn(dbname=name))
        assert report.migrations_applied[0] == "0001_tasks"
        assert policies(cluster.dsn(dbname=name)) == EXPECTED_POLICIES
    finally:
        cluster.drop_database(name)
