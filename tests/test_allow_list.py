"""The audit as an allow-list (issue #9): an attacker's weakenings, and the running API closing on them.

Each case is a change a superuser could make so that the API, or a login role, reads or changes other
users' tasks: a path around the policies (views, SECURITY DEFINER functions, triggers, rules,
inheritance, publications, foreign data...), more power for a role (attributes, memberships,
predefined roles, settings), or a silent change to what the policies call (a function's volatility,
body or grants, a column default, pg_catalog). For each: `findings()` names it at severity `error`,
`taskapi audit` exits 1, /ready and /api answer 503 within two posture checks, and after the revert
everything is clear again. One database and one server serve every case, on a server this session
started (roles are cluster-wide), so a case whose revert is not exact fails the next one too.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from api.cli import main as taskapi
from api.posture import FINDINGS_UNAVAILABLE
from conftest import Cluster, Database, Server, make_user, new_database, server_env, wait_until

POSTURE_CHECK_S = 0.5
# "Within two checks" (each may take its 2 s timeout), plus room for a request and a loaded machine.
TWO_CHECKS_S = 2 * (POSTURE_CHECK_S + 2) + 15

LIST_FINDINGS = 'SELECT "check", severity, object FROM taskapi_audit.findings()'


@dataclass(frozen=True)
class Weakening:
    """A change that weakens isolation, the check that must name it, and its exact undoing.

    `{db}` in the SQL is the database's name.
    """

    name: str
    check: str
    weaken: str
    revert: str

    def __str__(self) -> str:
        return self.name


TASK_EXISTS_BODY = "\n    SELECT EXISTS (SELECT 1 FROM taskapi.tasks WHERE id = task_id)\n"
IDENTITY_BODY = "\n    SELECT nullif(nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub', '')\n"
IDENTITY = ("CREATE OR REPLACE FUNCTION taskapi.current_user_id() RETURNS text LANGUAGE sql STABLE PARALLEL SAFE"
            " SET search_path = pg_catalog, pg_temp AS $body${body}$body$")

WEAKENINGS = [
    # 1. Paths around the policies, in any schema or beside the table.
    Weakening("view owned by a superuser", "outside_dependent",
              "CREATE VIEW public.all_tasks AS SELECT * FROM taskapi.tasks;"
              " GRANT SELECT ON public.all_tasks TO taskapi_app, taskapi_auditor",
              "DROP VIEW public.all_tasks"),
    Weakening("view owned by taskapi_owner", "outside_dependent",
              "CREATE VIEW public.all_tasks AS SELECT * FROM taskapi.tasks;"
              " ALTER VIEW public.all_tasks OWNER TO taskapi_owner; GRANT SELECT ON public.all_tasks TO taskapi_app",
              "DROP VIEW public.all_tasks"),
    Weakening("security_invoker view in another schema", "outside_dependent",
              "CREATE SCHEMA reports; CREATE VIEW reports.tasks WITH (security_invoker = true)"
              " AS SELECT * FROM taskapi.tasks", "DROP SCHEMA reports CASCADE"),
    Weakening("materialized view", "outside_dependent",
              "CREATE MATERIALIZED VIEW public.task_copy AS SELECT * FROM taskapi.tasks;"
              " GRANT SELECT ON public.task_copy TO taskapi_auditor", "DROP MATERIALIZED VIEW public.task_copy"),
    Weakening("SECURITY DEFINER function owned by a superuser", "security_definer_reachable",
              "CREATE FUNCTION public.every_task() RETURNS json LANGUAGE sql SECURITY DEFINER"
              " AS 'SELECT json_agg(t) FROM taskapi.tasks t'", "DROP FUNCTION public.every_task()"),
    Weakening("SECURITY DEFINER function owned by taskapi_owner", "security_definer_reachable",
              "CREATE FUNCTION public.every_task() RETURNS json LANGUAGE sql SECURITY DEFINER"
              " AS 'SELECT json_agg(t) FROM taskapi.tasks t';"
              " ALTER FUNCTION public.every_task() OWNER TO taskapi_owner",
              "DROP FUNCTION public.every_task()"),
    Weakening("SECURITY DEFINER function owned by a BYPASSRLS role", "security_definer_reachable",
              "CREATE ROLE reader BYPASSRLS; GRANT USAGE ON SCHEMA taskapi TO reader;"
              " GRANT SELECT ON taskapi.tasks TO reader;"
              " CREATE FUNCTION public.every_task() RETURNS json LANGUAGE sql SECURITY DEFINER"
              " AS 'SELECT json_agg(t) FROM taskapi.tasks t'; ALTER FUNCTION public.every_task() OWNER TO reader",
              "DROP FUNCTION public.every_task(); REVOKE ALL ON taskapi.tasks FROM reader;"
              " REVOKE ALL ON SCHEMA taskapi FROM reader; DROP ROLE reader"),
    Weakening("function with a SQL-standard body", "outside_dependent",
              "CREATE FUNCTION public.count_tasks() RETURNS bigint LANGUAGE sql"
              " BEGIN ATOMIC SELECT count(*) FROM taskapi.tasks; END", "DROP FUNCTION public.count_tasks()"),
    Weakening("trigger copying rows", "trigger_drift",
              "CREATE TABLE public.copy (LIKE taskapi.tasks); GRANT SELECT ON public.copy TO taskapi_app;"
              " CREATE FUNCTION public.copy_task() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER"
              " AS $$BEGIN INSERT INTO public.copy SELECT NEW.*; RETURN NEW; END$$;"
              " CREATE TRIGGER copy_rows AFTER INSERT OR UPDATE ON taskapi.tasks"
              " FOR EACH ROW EXECUTE FUNCTION public.copy_task()",
              "DROP TRIGGER copy_rows ON taskapi.tasks; DROP FUNCTION public.copy_task(); DROP TABLE public.copy"),
    Weakening("rule copying rows", "rule_drift",
              "CREATE TABLE public.copy (LIKE taskapi.tasks); GRANT SELECT ON public.copy TO taskapi_app;"
              " CREATE RULE copy_rows AS ON INSERT TO taskapi.tasks DO ALSO INSERT INTO public.copy SELECT NEW.*",
              "DROP RULE copy_rows ON taskapi.tasks; DROP TABLE public.copy"),
    Weakening("the update trigger disabled", "trigger_drift",
              "ALTER TABLE taskapi.tasks DISABLE TRIGGER tasks_touch_updated_at",
              "ALTER TABLE taskapi.tasks ENABLE TRIGGER tasks_touch_updated_at"),
    Weakening("the table made a child of a table without RLS", "outside_dependency",
              "CREATE TABLE public.parent (LIKE taskapi.tasks INCLUDING GENERATED);"
              " GRANT SELECT ON public.parent TO taskapi_app;"
              " ALTER TABLE taskapi.tasks INHERIT public.parent",
              "ALTER TABLE taskapi.tasks NO INHERIT public.parent; DROP TABLE public.parent"),
    Weakening("an inheritance child of the table", "outside_dependent",
              "CREATE TABLE public.child () INHERITS (taskapi.tasks)", "DROP TABLE public.child"),
    Weakening("a foreign key that probes task ids", "outside_dependent",
              "CREATE TABLE public.refs (id uuid REFERENCES taskapi.tasks (id));"
              " GRANT INSERT ON public.refs TO taskapi_app",
              "DROP TABLE public.refs"),
    Weakening("publication of the table", "publication_includes_data",
              "CREATE PUBLICATION leak FOR TABLE taskapi.tasks", "DROP PUBLICATION leak"),
    Weakening("publication of every table", "publication_includes_data",
              "CREATE PUBLICATION leak FOR ALL TABLES", "DROP PUBLICATION leak"),
    Weakening("extended statistics elsewhere", "outside_dependent",
              "CREATE STATISTICS public.task_stats ON user_id, title FROM taskapi.tasks",
              "DROP STATISTICS public.task_stats"),
    Weakening("extended statistics in schema taskapi", "dependency_drift",
              "CREATE STATISTICS taskapi.task_stats ON user_id, title FROM taskapi.tasks",
              "DROP STATISTICS taskapi.task_stats"),
    Weakening("a user mapping for the runtime role", "foreign_data_reachable",
              "CREATE FOREIGN DATA WRAPPER loop_fdw; CREATE SERVER loop FOREIGN DATA WRAPPER loop_fdw;"
              " CREATE USER MAPPING FOR taskapi_app SERVER loop",
              "DROP SERVER loop CASCADE; DROP FOREIGN DATA WRAPPER loop_fdw"),
    Weakening("an event trigger that could rewrite what migrate installs", "event_trigger_present",
              "CREATE FUNCTION public.on_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$BEGIN END$$;"
              " CREATE EVENT TRIGGER on_ddl ON ddl_command_end EXECUTE FUNCTION public.on_ddl()",
              "DROP EVENT TRIGGER on_ddl; DROP FUNCTION public.on_ddl()"),
    Weakening("an index calling a function", "index_drift",
              "CREATE INDEX tasks_title_idx ON taskapi.tasks (lower(title))", "DROP INDEX taskapi.tasks_title_idx"),
    Weakening("a column added", "column_drift",
              "ALTER TABLE taskapi.tasks ADD COLUMN shared_with text",
              "ALTER TABLE taskapi.tasks DROP COLUMN shared_with"),
    Weakening("a column-level grant", "column_drift",
              "GRANT UPDATE (completed) ON taskapi.tasks TO taskapi_auditor",
              "REVOKE UPDATE (completed) ON taskapi.tasks FROM taskapi_auditor"),
    Weakening("a constraint dropped", "constraint_drift",
              "ALTER TABLE taskapi.tasks DROP CONSTRAINT tasks_user_id_length",
              "ALTER TABLE taskapi.tasks ADD CONSTRAINT tasks_user_id_length"
              " CHECK (char_length(user_id) BETWEEN 1 AND 255)"),
    Weakening("a grant on the audit schema", "schema_drift",
              "GRANT USAGE ON SCHEMA taskapi_audit TO PUBLIC", "REVOKE USAGE ON SCHEMA taskapi_audit FROM PUBLIC"),
    Weakening("a grant on yoyo's schema", "schema_drift",
              "GRANT USAGE ON SCHEMA taskapi_meta TO PUBLIC", "REVOKE USAGE ON SCHEMA taskapi_meta FROM PUBLIC"),
    Weakening("a grant on yoyo's bookkeeping", "relation_drift",
              "GRANT SELECT ON taskapi_meta._yoyo_migration TO taskapi_app",
              "REVOKE SELECT ON taskapi_meta._yoyo_migration FROM taskapi_app"),
    Weakening("a grant on the database", "database_drift",
              "GRANT CREATE ON DATABASE {db} TO PUBLIC", "REVOKE CREATE ON DATABASE {db} FROM PUBLIC"),
    Weakening("default privileges for future tables", "default_privileges_drift",
              "ALTER DEFAULT PRIVILEGES FOR ROLE taskapi_owner IN SCHEMA taskapi GRANT SELECT ON TABLES TO PUBLIC",
              "ALTER DEFAULT PRIVILEGES FOR ROLE taskapi_owner IN SCHEMA taskapi REVOKE SELECT ON TABLES FROM PUBLIC"),
    Weakening("the manifest emptied", "manifest_missing",
              "DELETE FROM taskapi_audit.manifest",
              "INSERT INTO taskapi_audit.manifest (kind, object, definition)"
              " SELECT kind, object, definition FROM taskapi_audit.live_manifest()"),
    Weakening("the manifest hidden by row-level security", "manifest_missing",
              "ALTER TABLE taskapi_audit.manifest ENABLE ROW LEVEL SECURITY",
              "ALTER TABLE taskapi_audit.manifest DISABLE ROW LEVEL SECURITY"),
    Weakening("a view in the audit schema with its owner's rights", "view_without_security_invoker",
              "CREATE VIEW taskapi_audit.every_task AS SELECT * FROM taskapi.tasks;"
              " ALTER VIEW taskapi_audit.every_task OWNER TO taskapi_owner;"
              " GRANT SELECT ON taskapi_audit.every_task TO taskapi_auditor",
              "DROP VIEW taskapi_audit.every_task"),
    Weakening("a BYPASSRLS login granted SELECT on the table", "unexpected_grantee",
              "CREATE ROLE spy LOGIN BYPASSRLS; GRANT USAGE ON SCHEMA taskapi TO spy;"
              " GRANT SELECT ON taskapi.tasks TO spy",
              "REVOKE ALL ON taskapi.tasks FROM spy; REVOKE ALL ON SCHEMA taskapi FROM spy; DROP ROLE spy"),
    # 1b. The same paths around the tables beside it: idempotency_keys keeps each keyed create's answer
    # (a task's title and description), task_counts every user's counts.
    Weakening("a trigger copying idempotency keys", "trigger_drift",
              "CREATE TABLE public.keys_copy (LIKE taskapi.idempotency_keys);"
              " GRANT SELECT ON public.keys_copy TO taskapi_app;"
              " CREATE FUNCTION public.copy_key() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER"
              " AS $$BEGIN INSERT INTO public.keys_copy SELECT NEW.*; RETURN NEW; END$$;"
              " CREATE TRIGGER copy_key AFTER INSERT ON taskapi.idempotency_keys"
              " FOR EACH ROW EXECUTE FUNCTION public.copy_key()",
              "DROP TRIGGER copy_key ON taskapi.idempotency_keys; DROP FUNCTION public.copy_key();"
              " DROP TABLE public.keys_copy"),
    Weakening("a rule copying idempotency keys", "rule_drift",
              "CREATE TABLE public.keys_copy (LIKE taskapi.idempotency_keys); CREATE RULE copy_key AS ON INSERT"
              " TO taskapi.idempotency_keys DO ALSO INSERT INTO public.keys_copy SELECT NEW.*",
              "DROP RULE copy_key ON taskapi.idempotency_keys; DROP TABLE public.keys_copy"),
    Weakening("a view of every idempotency key", "outside_dependent",
              "CREATE VIEW public.all_keys AS SELECT * FROM taskapi.idempotency_keys;"
              " GRANT SELECT ON public.all_keys TO taskapi_app",
              "DROP VIEW public.all_keys"),
    Weakening("a SECURITY DEFINER function reading idempotency keys", "security_definer_reachable",
              "CREATE FUNCTION public.every_key() RETURNS json LANGUAGE sql SECURITY DEFINER"
              " AS 'SELECT json_agg(k) FROM taskapi.idempotency_keys k'",
              "DROP FUNCTION public.every_key()"),
    Weakening("an open policy on idempotency keys", "policy_drift",
              "CREATE POLICY open_keys ON taskapi.idempotency_keys FOR SELECT TO taskapi_app USING (true)",
              "DROP POLICY open_keys ON taskapi.idempotency_keys"),
    Weakening("idempotency keys with row-level security not forced", "rls_not_forced",
              "ALTER TABLE taskapi.idempotency_keys NO FORCE ROW LEVEL SECURITY",
              "ALTER TABLE taskapi.idempotency_keys FORCE ROW LEVEL SECURITY"),
    Weakening("a view of every user's counts", "outside_dependent",
              "CREATE VIEW public.all_counts AS SELECT * FROM taskapi.task_counts;"
              " GRANT SELECT ON public.all_counts TO taskapi_app",
              "DROP VIEW public.all_counts"),
    Weakening("the task JSON function made SECURITY DEFINER", "security_definer_not_allowed",
              "ALTER FUNCTION taskapi.task_json(taskapi.tasks) SECURITY DEFINER",
              "ALTER FUNCTION taskapi.task_json(taskapi.tasks) SECURITY INVOKER"),
    Weakening("the keyed create made SECURITY DEFINER", "security_definer_not_allowed",
              "ALTER FUNCTION taskapi.create_task_once SECURITY DEFINER",
              "ALTER FUNCTION taskapi.create_task_once SECURITY INVOKER"),
    # 2. Roles that become more than they are.
    Weakening("CREATEROLE for the runtime role", "login_role_attribute",
              "ALTER ROLE taskapi_app CREATEROLE", "ALTER ROLE taskapi_app NOCREATEROLE"),
    Weakening("CREATEDB for the auditor", "login_role_attribute",
              "ALTER ROLE taskapi_auditor CREATEDB", "ALTER ROLE taskapi_auditor NOCREATEDB"),
    Weakening("REPLICATION for the runtime role", "login_role_attribute",
              "ALTER ROLE taskapi_app REPLICATION", "ALTER ROLE taskapi_app NOREPLICATION"),
    Weakening("the runtime role reads server files", "runtime_role_member_of_privileged_role",
              "GRANT pg_read_server_files TO taskapi_app", "REVOKE pg_read_server_files FROM taskapi_app"),
    Weakening("the runtime role reads all data", "runtime_role_member_of_privileged_role",
              "GRANT pg_read_all_data TO taskapi_app", "REVOKE pg_read_all_data FROM taskapi_app"),
    Weakening("the auditor runs server programs", "auditor_member_of_privileged_role",
              "GRANT pg_execute_server_program TO taskapi_auditor",
              "REVOKE pg_execute_server_program FROM taskapi_auditor"),
    Weakening("the auditor becomes the owner through a NOINHERIT role", "auditor_member_of_privileged_role",
              "CREATE ROLE middle NOINHERIT; GRANT taskapi_owner TO middle; GRANT middle TO taskapi_auditor",
              "DROP ROLE middle"),
    Weakening("the runtime role a member of a harmless-looking role", "membership_drift",
              "CREATE ROLE team; GRANT team TO taskapi_app", "DROP ROLE team"),
    Weakening("a new member of taskapi_owner", "membership_drift",
              "CREATE ROLE intruder LOGIN; GRANT taskapi_owner TO intruder", "DROP ROLE intruder"),
    Weakening("a new member of the runtime role", "role_grant_drift",
              "CREATE ROLE impostor LOGIN; GRANT taskapi_app TO impostor", "DROP ROLE impostor"),
    Weakening("the owner role may log in", "role_drift",
              "ALTER ROLE taskapi_owner LOGIN", "ALTER ROLE taskapi_owner NOLOGIN"),
    Weakening("a search_path for the database", "search_path_setting",
              "ALTER DATABASE {db} SET search_path = public, pg_catalog", "ALTER DATABASE {db} RESET search_path"),
    Weakening("default claims for the auditor", "setting_drift",
              "ALTER ROLE taskapi_auditor IN DATABASE {db} SET request.jwt.claims = '{{\"sub\": \"alice\"}}'",
              "ALTER ROLE taskapi_auditor IN DATABASE {db} RESET request.jwt.claims"),
    Weakening("a setting for the runtime role everywhere", "setting_drift",
              "ALTER ROLE taskapi_app SET search_path = public", "ALTER ROLE taskapi_app RESET search_path"),
    # 3. Silent changes to what the policies call.
    Weakening("the identity function made IMMUTABLE", "function_drift",
              "ALTER FUNCTION taskapi.current_user_id() IMMUTABLE", "ALTER FUNCTION taskapi.current_user_id() STABLE"),
    Weakening("the identity function's body replaced", "function_drift",
              IDENTITY.format(body=IDENTITY_BODY.replace("nullif(nullif", "lower(nullif(nullif").replace(
                  "'sub', '')", "'sub', ''))")), IDENTITY.format(body=IDENTITY_BODY)),
    Weakening("the identity function's search_path", "function_drift",
              "ALTER FUNCTION taskapi.current_user_id() SET search_path = public, pg_catalog",
              "ALTER FUNCTION taskapi.current_user_id() SET search_path = pg_catalog, pg_temp"),
    Weakening("the identity function made LEAKPROOF", "function_drift",
              "ALTER FUNCTION taskapi.current_user_id() LEAKPROOF",
              "ALTER FUNCTION taskapi.current_user_id() NOT LEAKPROOF"),
    Weakening("task_exists without its search_path", "function_drift",
              "CREATE OR REPLACE FUNCTION taskapi.task_exists(task_id uuid) RETURNS boolean LANGUAGE sql STABLE"
              f" SECURITY DEFINER AS $body${TASK_EXISTS_BODY}$body$",
              "CREATE OR REPLACE FUNCTION taskapi.task_exists(task_id uuid) RETURNS boolean LANGUAGE sql STABLE"
              f" SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $body${TASK_EXISTS_BODY}$body$"),
    Weakening("the user_id default changed", "column_drift",
              "ALTER TABLE taskapi.tasks ALTER COLUMN user_id SET DEFAULT 'alice'",
              "ALTER TABLE taskapi.tasks ALTER COLUMN user_id SET DEFAULT taskapi.current_user_id()"),
    Weakening("EXECUTE on task_exists for the auditor", "function_drift",
              "GRANT EXECUTE ON FUNCTION taskapi.task_exists(uuid) TO taskapi_auditor",
              "REVOKE EXECUTE ON FUNCTION taskapi.task_exists(uuid) FROM taskapi_auditor"),
    Weakening("a function planted in a taskapi schema", "function_drift",
              "CREATE FUNCTION taskapi_audit.noop() RETURNS void LANGUAGE sql AS ''",
              "DROP FUNCTION taskapi_audit.noop()"),
    Weakening("EXECUTE on pg_read_binary_file for the runtime role", "catalog_drift",
              "GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text) TO taskapi_app",
              "REVOKE EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text) FROM taskapi_app"),
    Weakening("SELECT on pg_statistic for the auditor", "catalog_drift",
              "GRANT SELECT ON pg_catalog.pg_statistic TO taskapi_auditor",
              "REVOKE SELECT ON pg_catalog.pg_statistic FROM taskapi_auditor"),
    Weakening("a function planted in pg_catalog", "catalog_drift",
              "CREATE FUNCTION pg_catalog.lower(varchar) RETURNS text LANGUAGE sql IMMUTABLE AS 'SELECT ''x'''",
              "DROP FUNCTION pg_catalog.lower(varchar)"),
]


def run_sql(dsn: str, statement: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement)


def findings(dsn: str) -> set[tuple[str, str, str]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return set(conn.execute(LIST_FINDINGS).fetchall())


def checks_of(ready: httpx.Response) -> list[str]:
    """The checks a 503 from /ready names; none for a 200."""
    return ready.json().get("checks", []) if ready.status_code == 503 else []


def audit_exit_status(dsn: str) -> int:
    """`taskapi audit --json --dsn dsn`, in this process (the CLI's own code path, without a fork)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return taskapi(["audit", "--json", "--dsn", dsn])


@pytest.fixture(scope="module")
def weak_database(private_cluster: Cluster) -> Iterator[Database]:
    db = new_database(private_cluster, prefix="taskapi_weak")
    yield db
    private_cluster.drop_database(db.name)


@pytest.fixture(scope="module")
def weak_server(weak_database: Database, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = server_env(weak_database, POSTURE_CHECK_S=str(POSTURE_CHECK_S))
    srv = Server(env=env, log_path=tmp_path_factory.mktemp("weak") / "serve.log").start()
    yield srv
    srv.stop()


def test_every_weakening_names_a_distinct_case():
    assert len({w.name for w in WEAKENINGS}) == len(WEAKENINGS)


@pytest.mark.slow
@pytest.mark.parametrize("case", WEAKENINGS, ids=str)
def test_a_weakening_is_found_and_closes_the_api(case: Weakening, weak_database: Database, weak_server: Server):
    db = weak_database
    user = make_user()
    with httpx.Client(base_url=weak_server.base_url, timeout=10) as http:
        wait_until(lambda: http.get("/ready").status_code == 200, timeout=TWO_CHECKS_S, what="a sound start")
        assert findings(db.auditor_dsn) == set()
        run_sql(db.admin_dsn, case.weaken.format(db=db.name))
        try:
            found = findings(db.auditor_dsn)
            assert case.check in {check for check, severity, _ in found if severity == "error"}, found
            assert case.check in {check for check, _, _ in findings(db.app_dsn)}  # what the API's guard sees
            assert audit_exit_status(db.admin_dsn) == 1
            # Closed within two checks; named as soon as a check completes (on a loaded machine one may
            # time out first, and the guard then says findings_unavailable: closed all the same).
            wait_until(lambda: case.check in checks_of(http.get("/ready")), timeout=TWO_CHECKS_S,
                       what=f"/ready 503 naming {case.check}")
            response = http.get("/api/tasks", headers=user.headers)
            assert response.status_code == 503 and response.json()["error"] == "service_unavailable"
        finally:
            run_sql(db.admin_dsn, case.revert.format(db=db.name))
        assert findings(db.auditor_dsn) == set()
        wait_until(lambda: http.get("/ready").status_code == 200, timeout=TWO_CHECKS_S, what="/ready 200 again")
        assert http.get("/api/tasks", headers=user.headers).status_code == 200


@pytest.mark.slow
def test_the_guard_closes_when_findings_cannot_complete(scratch_database: Database, tmp_path: Path):
    # The report: the audit table locked, and a policy that lets everyone read everything
    # committed meanwhile. The guard may not serve on the verdict of its last check for long.
    db = scratch_database
    srv = Server(env=server_env(db, POSTURE_CHECK_S=str(POSTURE_CHECK_S)), log_path=tmp_path / "serve.log").start()
    try:
        owner, bob = make_user("owner"), make_user("bob")
        with httpx.Client(base_url=srv.base_url, timeout=30) as http:
            wait_until(lambda: http.get("/ready").status_code == 200, timeout=TWO_CHECKS_S, what="a sound start")
            assert http.post("/api/tasks", json={"title": "private"}, headers=owner.headers).status_code == 201
            with psycopg.connect(db.admin_dsn) as locker:
                locker.execute("LOCK TABLE taskapi_audit.manifest IN ACCESS EXCLUSIVE MODE")
                run_sql(db.admin_dsn, "CREATE POLICY everyone ON taskapi.tasks FOR SELECT TO taskapi_app USING (true)")
                wait_until(lambda: http.get("/ready").status_code == 503, timeout=TWO_CHECKS_S,
                           what="/ready 503 while findings() cannot complete")
                assert http.get("/ready").json()["checks"] == [FINDINGS_UNAVAILABLE]
                listed = http.get("/api/tasks", headers=bob.headers)
                assert listed.status_code == 503, listed.text
                locker.rollback()
            wait_until(lambda: "policy_always_true" in http.get("/ready").json().get("checks", []),
                       timeout=TWO_CHECKS_S, what="the policy reported once findings() completes")
            assert http.get("/api/tasks", headers=bob.headers).status_code == 503
            run_sql(db.admin_dsn, "DROP POLICY everyone ON taskapi.tasks")
            wait_until(lambda: http.get("/ready").status_code == 200, timeout=TWO_CHECKS_S, what="/ready 200")
            assert http.get("/api/tasks", headers=bob.headers).json()["tasks"] == []
    finally:
        srv.stop()
    assert "closing until one completes" in srv.log()
