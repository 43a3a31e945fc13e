"""`taskapi migrate`: idempotent, owner-owned objects, policies re-applied, posture repaired; roles other
databases use are not changed without an opt-in; functions planted in `public` never run (issue #9)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from api.audit import audit
from api.migrate import SharedRoleChange, migrate
from conftest import APP_PASSWORD, AUDITOR_PASSWORD, ROOT, Cluster, Database, assert_private, cluster_change

EXPECTED_POLICIES = {
    ("tasks_select", "SELECT", "{taskapi_app,taskapi_auditor}"),
    ("tasks_insert", "INSERT", "{taskapi_app}"),
    ("tasks_update", "UPDATE", "{taskapi_app}"),
    ("tasks_delete", "DELETE", "{taskapi_app}"),
    ("tasks_owner_task_exists", "SELECT", "{taskapi_owner}"),
    ("task_counts_select", "SELECT", "{taskapi_app,taskapi_auditor}"),
    ("task_counts_insert", "INSERT", "{taskapi_app}"),
    ("task_counts_update", "UPDATE", "{taskapi_app}"),
    ("idempotency_keys_select", "SELECT", "{taskapi_app,taskapi_auditor}"),
    ("idempotency_keys_insert", "INSERT", "{taskapi_app}"),
    ("idempotency_keys_delete_expired", "DELETE", "{taskapi_app}"),
}


def policies(dsn: str) -> set[tuple[str, str, str]]:
    with psycopg.connect(dsn) as conn:
        return {(name, cmd, roles) for name, cmd, roles in conn.execute(
            "SELECT policyname, cmd, roles::text FROM pg_policies WHERE schemaname = 'taskapi'").fetchall()}


def test_migrate_twice_is_a_no_op_the_second_time(scratch_database):
    report = migrate(scratch_database.admin_dsn, app_password=APP_PASSWORD, auditor_password=AUDITOR_PASSWORD)
    assert report.migrations_applied == []
    assert report.roles_created == [] and report.roles_fixed == []
    assert report.policy_files == ["idempotency_keys.sql", "task_counts.sql", "tasks.sql"]
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


def test_migrate_takes_back_ownership_and_membership(private_database):
    assert_private(private_database.admin_dsn)
    with psycopg.connect(private_database.admin_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE taskapi.tasks OWNER TO taskapi_app")
        conn.execute("GRANT taskapi_owner TO taskapi_auditor")
    try:
        report = migrate(private_database.admin_dsn, allow_shared_role_changes=True)
        assert any("taskapi_auditor" in fix for fix in report.roles_fixed)
        with psycopg.connect(private_database.admin_dsn) as conn:
            assert conn.execute("SELECT pg_get_userbyid(relowner) FROM pg_class "
                                "WHERE oid = 'taskapi.tasks'::regclass").fetchone()[0] == "taskapi_owner"
            assert conn.execute("SELECT pg_has_role('taskapi_auditor', 'taskapi_owner', 'MEMBER')").fetchone()[0] \
                is False
    finally:
        with psycopg.connect(private_database.admin_dsn, autocommit=True) as conn:
            conn.execute("REVOKE taskapi_owner FROM taskapi_auditor")


def test_migrate_removes_bypassrls_from_the_runtime_role(private_database):
    with cluster_change(private_database.admin_dsn, "ALTER ROLE taskapi_app BYPASSRLS",
                        "ALTER ROLE taskapi_app NOBYPASSRLS"):
        report = migrate(private_database.admin_dsn, allow_shared_role_changes=True)
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
    assert "applied policies from idempotency_keys.sql, task_counts.sql, tasks.sql" in ok.stdout


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


def test_migrate_records_the_manifest_it_compares_with(scratch_database):
    with psycopg.connect(scratch_database.auditor_dsn, autocommit=True) as conn:
        recorded = conn.execute("SELECT kind, object, definition FROM taskapi_audit.manifest").fetchall()
        live = conn.execute("SELECT kind, object, definition FROM taskapi_audit.live_manifest()").fetchall()
    assert sorted(recorded) == sorted(live)
    kinds = {kind for kind, _, _ in recorded}
    assert {"function", "relation", "column", "trigger", "constraint", "index", "dependency", "role", "schema",
            "database", "catalog"} <= kinds
    objects = {obj for _, obj, _ in recorded}
    assert {"function taskapi.current_user_id()", "column taskapi.tasks.user_id", "role taskapi_app",
            "trigger tasks_touch_updated_at on taskapi.tasks", "functions of pg_catalog"} <= objects


# Roles are shared by every database of the server (issue #9, 6b).

@pytest.fixture
def second_database(private_cluster: Cluster, private_database: Database) -> Iterator[str]:
    """The admin DSN of another database on the server of `private_database`, not migrated yet."""
    name = f"taskapi_second_{uuid.uuid4().hex[:8]}"
    private_cluster.create_database(name)
    yield private_cluster.dsn(dbname=name)
    private_cluster.drop_database(name)


def test_migrate_refuses_a_new_password_for_a_role_another_database_uses(private_database, second_database):
    with pytest.raises(SharedRoleChange) as refused:
        migrate(second_database, app_password="another-password-entirely")
    assert "taskapi_app: new password" in str(refused.value)
    assert private_database.name in str(refused.value)
    assert "another-password-entirely" not in str(refused.value)
    # Nothing changed: the other database's runtime role still logs in with its password.
    with psycopg.connect(private_database.app_dsn) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("taskapi_app",)
    assert password_is(private_database.admin_dsn, "taskapi_app", APP_PASSWORD)


def test_setting_the_password_a_role_already_has_is_no_change(private_database, second_database):
    report = migrate(second_database, app_password=APP_PASSWORD, auditor_password=AUDITOR_PASSWORD)
    assert report.passwords_set == [] and report.roles_fixed == []
    assert report.migrations_applied  # the second database was migrated all the same


def test_migrate_refuses_to_fix_a_shared_role_unless_allowed(private_database, second_database):
    with cluster_change(private_database.admin_dsn, "ALTER ROLE taskapi_auditor CREATEDB",
                        "ALTER ROLE taskapi_auditor NOCREATEDB"):
        result = cli_migrate(second_database)
        assert result.returncode == 1
        assert "taskapi_auditor: NOCREATEDB" in result.stderr and "--allow-shared-role-changes" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert role_flag(private_database.admin_dsn, "taskapi_auditor", "rolcreatedb") is True
        allowed = cli_migrate(second_database, TASKAPI_ALLOW_SHARED_ROLE_CHANGES="1")
        assert allowed.returncode == 0, allowed.stderr
        assert "fixed role taskapi_auditor: NOCREATEDB" in allowed.stdout
        assert role_flag(private_database.admin_dsn, "taskapi_auditor", "rolcreatedb") is False
        again = cli_migrate(second_database, "--allow-shared-role-changes")
        assert again.returncode == 0 and "fixed role" not in again.stdout


def cli_migrate(admin_dsn: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "TASKAPI_"))}
    return subprocess.run([sys.executable, "-m", "api.cli", "migrate", *args], cwd=ROOT, capture_output=True,
                          text=True, env={**base, "DATABASE_ADMIN_URL": admin_dsn, **env})


def role_flag(admin_dsn: str, role: str, flag: str) -> bool:
    with psycopg.connect(admin_dsn) as conn:
        return conn.execute(f"SELECT {flag} FROM pg_roles WHERE rolname = %s", [role]).fetchone()[0]


def password_is(admin_dsn: str, role: str, password: str) -> bool:
    from api.migrate import _password_is

    with psycopg.connect(admin_dsn, autocommit=True) as conn, conn.transaction():
        return _password_is(conn, role, password)


# Admin sessions are hijack-proof (issue #9, 4): a role that may create functions in `public` and set
# the database's search_path (the owner of a database, on managed services) plants better or equal
# matches for what an admin session calls; migrate and audit must never run them.

PLANTED = [
    ("pg_advisory_xact_lock(bigint)", "void", "pg_catalog.pg_advisory_xact_lock($1)"),
    ("to_regrole(text)", "regrole", "pg_catalog.to_regrole($1)"),
    ("format(text)", "text", "pg_catalog.format($1)"),
    ("format(text, text)", "text", "pg_catalog.format($1, $2)"),
    ("format(text, text, text)", "text", "pg_catalog.format($1, $2, $3)"),
    ("format(text, text, text, text)", "text", "pg_catalog.format($1, $2, $3, $4)"),
    ("format(text, name)", "text", "pg_catalog.format($1, $2)"),
    ("format(text, text, regclass, text)", "text", "pg_catalog.format($1, $2, $3, $4)"),
    ("format(text, regprocedure, text)", "text", "pg_catalog.format($1, $2, $3)"),
    ("format(text, name, text)", "text", "pg_catalog.format($1, $2, $3)"),
    ("pg_has_role(name, name, text)", "boolean", "pg_catalog.pg_has_role($1, $2, $3)"),
    ("pg_has_role(name, oid, text)", "boolean", "pg_catalog.pg_has_role($1, $2, $3)"),
    ("pg_has_role(text, text, text)", "boolean", "pg_catalog.pg_has_role($1::name, $2::name, $3)"),
    ("current_database()", "name", "pg_catalog.current_database()"),
    ("current_setting(text)", "text", "pg_catalog.current_setting($1)"),
    ("set_config(text, text, boolean)", "text", "pg_catalog.set_config($1, $2, $3)"),
    ("unnest(oid[])", "SETOF oid", "pg_catalog.unnest($1)"),
    ("unnest(text[])", "SETOF text", "pg_catalog.unnest($1)"),
    ("now()", "timestamptz", "pg_catalog.now()"),
    ("nullif(text, text)", "text", "CASE WHEN $1 = $2 THEN NULL ELSE $1 END"),
]


@pytest.fixture
def trapped_database(private_cluster: Cluster) -> Iterator[Database]:
    """A database owned by a non-superuser who planted PLANTED in `public` and put `public` first."""
    assert_private(private_cluster.admin_dsn)
    name = f"taskapi_trapped_{uuid.uuid4().hex[:8]}"
    private_cluster.create_database(name)
    admin = private_cluster.dsn(dbname=name)
    with psycopg.connect(private_cluster.admin_dsn, autocommit=True) as conn:
        conn.execute("CREATE ROLE planter LOGIN")
        conn.execute(f'ALTER DATABASE "{name}" OWNER TO planter')
    with psycopg.connect(private_cluster.dsn(dbname=name, user="planter"), autocommit=True) as conn:
        conn.execute("ALTER SCHEMA public OWNER TO planter")  # PostgreSQL 15+: pg_database_owner already owns it
        conn.execute("CREATE TABLE public.planted_calls (function text, called_by text)")
        conn.execute("GRANT INSERT ON public.planted_calls TO PUBLIC")
        for signature, returns, body in PLANTED:
            conn.execute(f"""
                CREATE FUNCTION public.{signature} RETURNS {returns} LANGUAGE sql AS $planted$
                    INSERT INTO public.planted_calls VALUES ('{signature}', session_user);
                    SELECT {body}
                $planted$""")
        conn.execute(f'ALTER DATABASE "{name}" SET search_path = public, pg_catalog')
    yield Database(name=name, admin_dsn=admin, app_dsn="", auditor_dsn="")
    private_cluster.drop_database(name)
    with psycopg.connect(private_cluster.admin_dsn, autocommit=True) as conn:
        conn.execute("DROP ROLE planter")


def planted_calls(db: Database) -> list[tuple[str, str]]:
    with psycopg.connect(db.admin_dsn, autocommit=True) as conn:
        return conn.execute("SELECT function, called_by FROM public.planted_calls").fetchall()


def test_the_trap_catches_an_unpinned_admin_session(trapped_database):
    # The control: an admin session that does not pin search_path runs the planted functions.
    with psycopg.connect(trapped_database.admin_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [0x7461736B617069])
        conn.execute("SELECT format('%%I.%%I', 'a'::text, 'b'::text), to_regrole('taskapi_owner'::text)")
    assert {function for function, _ in planted_calls(trapped_database)} == {
        "pg_advisory_xact_lock(bigint)", "format(text, text, text)", "to_regrole(text)"}
    assert {caller for _, caller in planted_calls(trapped_database)} == {"postgres"}


def test_migrate_and_audit_never_run_functions_planted_in_public(trapped_database):
    report = migrate(trapped_database.admin_dsn, app_password=APP_PASSWORD, auditor_password=AUDITOR_PASSWORD)
    assert report.migrations_applied and report.manifest_entries > 0
    migrate(trapped_database.admin_dsn, app_password=APP_PASSWORD, auditor_password=AUDITOR_PASSWORD)
    result = audit(trapped_database.admin_dsn)
    assert result.probe and all(step.status == "ok" for step in result.probe), result.probe
    assert planted_calls(trapped_database) == []
    # And the audit names the trap: the database's search_path puts `public` first.
    assert ("search_path_setting", "error", "settings of this database") in {
        (f.check, f.severity, f.object) for f in result.findings}
