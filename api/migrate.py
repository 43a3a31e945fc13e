"""`taskapi migrate`: roles, then yoyo migrations as taskapi_owner, then every file of sql/policies/.

Runs with an *admin* DSN (``DATABASE_ADMIN_URL``): a role that may create roles and grant membership
(a superuser, or on managed services the database's owner role). The server never uses it.
Idempotent and safe on every deploy: concurrent runs serialise on an advisory lock.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
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
# Any constant works; it only has to be the same for every `taskapi migrate`.
MIGRATE_LOCK_KEY = 0x7461736B617069  # "taskapi"


def sql_dir() -> Path:
    """The `sql/` folder of this checkout (``TASKAPI_SQL_DIR`` overrides it, e.g. in the image)."""
    override = os.environ.get("TASKAPI_SQL_DIR")
    return Path(override) if override else Path(__file__).resolve().parent.parent / "sql"


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
    """Hand back to taskapi_owner any object of the schema that someone gave to another role."""
    rows = conn.execute(
        """
        SELECT format('ALTER %%s %%s OWNER TO %%I',
                      CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
                                     WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'f' THEN 'FOREIGN TABLE'
                                     ELSE 'TABLE' END,
                      c.oid::regclass, %(owner)s::text)
        FROM pg_class c
        WHERE c.relnamespace = to_regnamespace(%(schema)s::text)
          AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
          AND c.relowner <> to_regrole(%(owner)s::text)
        UNION ALL
        SELECT format('ALTER ROUTINE %%s OWNER TO %%I', p.oid::regprocedure, %(owner)s::text)
        FROM pg_proc p
        WHERE p.pronamespace = to_regnamespace(%(schema)s::text) AND p.proowner <> to_regrole(%(owner)s::text)
        UNION ALL
        SELECT format('ALTER SCHEMA %%I OWNER TO %%I', n.nspname, %(owner)s::text)
        FROM pg_namespace n
        WHERE n.nspname = %(schema)s::text AND n.nspowner <> to_regrole(%(owner)s::text)
        """,
        {"schema": SCHEMA, "owner": OWNER_ROLE}).fetchall()
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


def _apply_policies(conn: psycopg.Connection, folder: Path, report: MigrateReport) -> None:
    for path in sorted(folder.glob("*.sql")):
        conn.execute(path.read_text(encoding="utf-8"))
        report.policy_files.append(path.name)
