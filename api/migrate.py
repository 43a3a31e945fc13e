"""`taskapi migrate`: roles, then yoyo migrations as taskapi_owner, then every file of sql/policies/.

Runs with an *admin* DSN (``DATABASE_ADMIN_URL``): a role that may create roles and grant membership
(a superuser, or on managed services the database's owner role). The server never uses it.
Idempotent and safe on every deploy: concurrent runs serialise on an advisory lock.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import LiteralString
from urllib.parse import quote, urlencode

import psycopg
from psycopg import ClientCursor, sql
from psycopg.conninfo import conninfo_to_dict

log = logging.getLogger("taskapi.migrate")

OWNER_ROLE = "taskapi_owner"
APP_ROLE = "taskapi_app"
AUDITOR_ROLE = "taskapi_auditor"
SCHEMA = "taskapi"
# yoyo's bookkeeping tables live apart from the data, so schema `taskapi` holds only RLS tables.
META_SCHEMA = "taskapi_meta"
# The posture views, findings() and the record of applied policies (sql/migrations/0002_audit.sql).
AUDIT_SCHEMA = "taskapi_audit"
# Any constant works; it only has to be the same for every `taskapi migrate`.
MIGRATE_LOCK_KEY = 0x7461736B617069  # "taskapi"


def sql_dir() -> Path:
    """The folder holding ``migrations/`` and ``policies/``: the package data `api.sql`.

    pyproject.toml installs the repository's top-level ``sql/`` as that package, so an installed
    wheel migrates from any working directory, and an editable install reads the checkout itself.
    """
    return Path(str(importlib.resources.files("api.sql")))


@dataclass
class MigrateReport:
    """What one `migrate` run did, for the CLI to print."""

    roles_created: list[str] = field(default_factory=list)
    roles_fixed: list[str] = field(default_factory=list)
    migrations_applied: list[str] = field(default_factory=list)
    policy_files: list[str] = field(default_factory=list)


def migrate(admin_dsn: str, *, app_password: str | None = None, auditor_password: str | None = None,
            sql_root: Path | None = None) -> MigrateReport:
    """Bring the database at `admin_dsn` to the current schema and policies; return what was done.

    Raises `psycopg.Error` (or `yoyo` errors) on failure; each step commits on its own, so a rerun
    continues where a failed one stopped.
    """
    root = sql_root or sql_dir()
    report = MigrateReport()
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATE_LOCK_KEY])
            _ensure_roles(conn, report, app_password=app_password, auditor_password=auditor_password)
            _ensure_ownership(conn)
        dsn_parts = conninfo_to_dict(admin_dsn)
        dsn_parts["dbname"] = conn.info.dbname
    _apply_migrations(dsn_parts, root / "migrations", report)
    with psycopg.connect(admin_dsn, autocommit=True, cursor_factory=ClientCursor) as conn:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATE_LOCK_KEY])
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(OWNER_ROLE)))
            _apply_policies(conn, root / "policies", report)
    return report


# What each role must and must not be. Attributes are changed only where they differ, because even
# naming SUPERUSER/NOSUPERUSER in ALTER ROLE needs superuser rights that a managed admin lacks.
_ROLE_ATTRIBUTES = {
    OWNER_ROLE: {"rolcanlogin": False, "rolsuper": False, "rolbypassrls": False},
    APP_ROLE: {"rolcanlogin": True, "rolsuper": False, "rolbypassrls": False,
               "rolcreaterole": False, "rolcreatedb": False, "rolreplication": False},
    AUDITOR_ROLE: {"rolcanlogin": True, "rolsuper": False, "rolbypassrls": False,
                   "rolcreaterole": False, "rolcreatedb": False, "rolreplication": False},
}
_ATTRIBUTE_KEYWORDS = {
    "rolcanlogin": ("LOGIN", "NOLOGIN"), "rolsuper": ("SUPERUSER", "NOSUPERUSER"),
    "rolbypassrls": ("BYPASSRLS", "NOBYPASSRLS"), "rolcreaterole": ("CREATEROLE", "NOCREATEROLE"),
    "rolcreatedb": ("CREATEDB", "NOCREATEDB"), "rolreplication": ("REPLICATION", "NOREPLICATION"),
}


def _ensure_roles(conn: psycopg.Connection, report: MigrateReport, *, app_password: str | None,
                  auditor_password: str | None) -> None:
    for role, wanted in _ROLE_ATTRIBUTES.items():
        row = conn.execute(
            "SELECT rolcanlogin, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb, rolreplication"
            " FROM pg_roles WHERE rolname = %s", [role]).fetchone()
        if row is None:
            keywords = [_ATTRIBUTE_KEYWORDS["rolcanlogin"][0 if wanted["rolcanlogin"] else 1]]
            conn.execute(sql.SQL("CREATE ROLE {} " + " ".join(keywords)).format(sql.Identifier(role)))
            report.roles_created.append(role)
            continue
        current = dict(zip(
            ("rolcanlogin", "rolsuper", "rolbypassrls", "rolcreaterole", "rolcreatedb", "rolreplication"),
            row, strict=True))
        wrong = [_ATTRIBUTE_KEYWORDS[k][0 if v else 1] for k, v in wanted.items() if current[k] != v]
        if wrong:
            conn.execute(sql.SQL("ALTER ROLE {} " + " ".join(wrong)).format(sql.Identifier(role)))
            report.roles_fixed.append(f"{role}: {' '.join(wrong)}")
    for role, password in ((APP_ROLE, app_password), (AUDITOR_ROLE, auditor_password)):
        if password:
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)))
        # Neither login role may act as the owner: that would let it switch off RLS.
        if conn.execute("SELECT pg_has_role(%s, %s, 'MEMBER')", [role, OWNER_ROLE]).fetchone()[0]:
            conn.execute(sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(OWNER_ROLE), sql.Identifier(role)))
            report.roles_fixed.append(f"{role}: no longer a member of {OWNER_ROLE}")
    # The admin must be able to SET ROLE taskapi_owner (a superuser always can).
    if not conn.execute("SELECT pg_has_role(current_user, %s, 'MEMBER')", [OWNER_ROLE]).fetchone()[0]:
        conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(sql.Identifier(OWNER_ROLE)))
    conn.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
        sql.Identifier(conn.info.dbname), sql.Identifier(OWNER_ROLE)))
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(
        sql.Identifier(META_SCHEMA), sql.Identifier(OWNER_ROLE)))


def _ensure_ownership(conn: psycopg.Connection) -> None:
    """Hand back to taskapi_owner any object of the three schemas that someone gave to another role.

    The audit schema counts as much as the data: a role that owned taskapi_audit.findings() could make
    it report nothing, and the posture guard of the running API would never close.
    """
    rows = conn.execute(
        """
        SELECT format('ALTER %%s %%s OWNER TO %%I',
                      CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
                                     WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'f' THEN 'FOREIGN TABLE'
                                     ELSE 'TABLE' END,
                      c.oid::regclass, %(owner)s::text)
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = ANY(%(schemas)s::text[])
          AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
          AND c.relowner <> to_regrole(%(owner)s::text)
        UNION ALL
        SELECT format('ALTER ROUTINE %%s OWNER TO %%I', p.oid::regprocedure, %(owner)s::text)
        FROM pg_proc p
        JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = ANY(%(schemas)s::text[]) AND p.proowner <> to_regrole(%(owner)s::text)
        UNION ALL
        SELECT format('ALTER SCHEMA %%I OWNER TO %%I', n.nspname, %(owner)s::text)
        FROM pg_namespace n
        WHERE n.nspname = ANY(%(schemas)s::text[]) AND n.nspowner <> to_regrole(%(owner)s::text)
        """,
        {"schemas": [SCHEMA, AUDIT_SCHEMA, META_SCHEMA], "owner": OWNER_ROLE}).fetchall()
    for (statement,) in rows:
        log.warning("fixing ownership: %s", statement)
        conn.execute(statement)


def _apply_migrations(dsn_parts: dict[str, str], folder: Path, report: MigrateReport) -> None:
    # Imported here: yoyo is only needed by this command, not by the server.
    from yoyo import get_backend, read_migrations

    dbname = dsn_parts.pop("dbname")
    # Every migration runs as taskapi_owner, so the owner owns what it creates; yoyo's own tables
    # go to taskapi_meta. yoyo 9 needs the postgresql+psycopg scheme to use psycopg 3.
    dsn_parts["options"] = (dsn_parts.get("options", "") +
                            f" -c role={OWNER_ROLE} -c search_path={META_SCHEMA}").strip()
    uri = f"postgresql+psycopg:///{quote(dbname, safe='')}?{urlencode(dsn_parts)}"
    backend = get_backend(uri)
    try:
        migrations = read_migrations(str(folder))
        with backend.lock():
            pending = backend.to_apply(migrations)
            backend.apply_migrations(pending)
            report.migrations_applied.extend(m.id for m in pending)
    finally:
        backend.connection.close()


# Every policy of the database, to tell which ones a policy file created (see _apply_policies).
LIST_POLICY_OIDS: LiteralString = "SELECT oid FROM pg_catalog.pg_policy"

# The record the policy_drift check of taskapi_audit.findings() compares the live policies with: the
# policies of schema taskapi that the files just created, in the normalised form of
# policy_definitions(), with the file each came from. It replaces the previous record whole.
FORGET_APPLIED_POLICIES: LiteralString = "DELETE FROM taskapi_audit.applied_policies"
RECORD_APPLIED_POLICIES: LiteralString = """
    INSERT INTO taskapi_audit.applied_policies
        (table_name, policy_name, command, permissive, roles, using_expr, with_check_expr,
         source_file, source_sha256)
    SELECT d.table_name, d.policy_name, d.command, d.permissive, d.roles, d.using_expr, d.with_check_expr,
           f.source_file, f.source_sha256
    FROM taskapi_audit.policy_definitions() d
    JOIN unnest(%(oids)s::oid[], %(files)s::text[], %(hashes)s::text[]) AS f(policy_oid, source_file, source_sha256)
      USING (policy_oid)
"""


def _apply_policies(conn: psycopg.Connection, folder: Path, report: MigrateReport) -> None:
    """Run every policy file, then record what they created, all in the caller's transaction.

    A policy counts as applied from a file when the file created it (its pg_policy oid is new after
    the file ran): a file drops and re-creates its policies, so one that merely survived a migrate,
    such as a policy added by hand to a table without a file, is not recorded and shows as drift.
    """
    created: dict[int, tuple[str, str]] = {}
    for path in sorted(folder.glob("*.sql")):
        text = path.read_text(encoding="utf-8")
        before = {oid for (oid,) in conn.execute(LIST_POLICY_OIDS)}
        conn.execute(text)
        source = (f"sql/policies/{path.name}", hashlib.sha256(text.encode()).hexdigest())
        created.update({oid: source for (oid,) in conn.execute(LIST_POLICY_OIDS) if oid not in before})
        report.policy_files.append(path.name)
    conn.execute(FORGET_APPLIED_POLICIES)
    conn.execute(RECORD_APPLIED_POLICIES, {
        "oids": list(created), "files": [f for f, _ in created.values()], "hashes": [h for _, h in created.values()]})
