"""`taskapi migrate`: roles, then yoyo migrations as taskapi_owner, then every file of sql/policies/.

Runs with an *admin* DSN (``DATABASE_ADMIN_URL``): a role that may create roles and grant membership
(a superuser, or on managed services the database's owner role). The server never uses it.
Idempotent and safe on every deploy: concurrent runs serialise on an advisory lock.

Every session it opens resolves names in pg_catalog first and never in a schema another role may
create objects in (`admin_conninfo`), so a function planted in `public` never runs with its rights.
Roles are shared by every database of the server: a change to a role that another database uses
needs an explicit opt-in (`SharedRoleChange`). The last step records the manifest that
``taskapi_audit.findings()`` compares the live catalogs with (sql/migrations/0003_manifest.sql).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.resources
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, LiteralString
from urllib.parse import quote, urlencode

import psycopg
from psycopg import ClientCursor, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

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
# The search_path of every session with elevated rights: pg_catalog first, temporary objects last,
# nothing a less privileged role can create objects in (CVE-2018-1058).
ADMIN_SEARCH_PATH = "pg_catalog,pg_temp"


def admin_conninfo(dsn: str, *, search_path: str = ADMIN_SEARCH_PATH) -> str:
    """`dsn` with `search_path` pinned as a startup option of the connection.

    A startup option holds from the first statement and outranks ``ALTER ROLE/DATABASE ... SET
    search_path``, which the owner of a database may set to put a schema of its own first. Options
    already in the DSN (or PGOPTIONS) are kept; the pinned path comes last, so it wins.
    """
    parts = conninfo_to_dict(dsn)
    options = parts.get("options") or os.environ.get("PGOPTIONS", "")
    parts["options"] = f"{options} -c search_path={search_path}".strip()
    return make_conninfo("", **parts)


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
    passwords_set: list[str] = field(default_factory=list)
    migrations_applied: list[str] = field(default_factory=list)
    policy_files: list[str] = field(default_factory=list)
    manifest_entries: int = 0


class SharedRoleChange(Exception):
    """migrate would change a role that another database of the server uses, and was not allowed to.

    ``str(exc)`` says which changes, and which databases use each role; nothing was changed.
    """


def migrate(admin_dsn: str, *, app_password: str | None = None, auditor_password: str | None = None,
            sql_root: Path | None = None, allow_shared_role_changes: bool = False) -> MigrateReport:
    """Bring the database at `admin_dsn` to the current schema and policies; return what was done.

    Raises `SharedRoleChange` before changing anything when a role needs a change (an attribute, a
    password that is not already the one given, a membership) and another database of the server
    uses that role, unless `allow_shared_role_changes`. Raises `psycopg.Error` (or `yoyo` errors) on
    failure; each step commits on its own, so a rerun continues where a failed one stopped.
    """
    root = sql_root or sql_dir()
    report = MigrateReport()
    with psycopg.connect(admin_conninfo(admin_dsn), autocommit=True) as conn:
        with conn.transaction():
            conn.execute(TAKE_MIGRATE_LOCK, [MIGRATE_LOCK_KEY])
            _ensure_roles(conn, report, app_password=app_password, auditor_password=auditor_password,
                          allow_shared=allow_shared_role_changes)
            _ensure_ownership(conn)
        dsn_parts = conninfo_to_dict(admin_dsn)
        dsn_parts["dbname"] = conn.info.dbname
    _apply_migrations(dsn_parts, root / "migrations", report)
    with psycopg.connect(admin_conninfo(admin_dsn), autocommit=True, cursor_factory=ClientCursor) as conn:
        with conn.transaction():
            conn.execute(TAKE_MIGRATE_LOCK, [MIGRATE_LOCK_KEY])
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(OWNER_ROLE)))
            _apply_policies(conn, root / "policies", report)
            _record_manifest(conn, report)
    return report


TAKE_MIGRATE_LOCK: LiteralString = "SELECT pg_catalog.pg_advisory_xact_lock(%s)"


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
                  auditor_password: str | None, allow_shared: bool) -> None:
    changes: list[_RoleChange] = []
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
            changes.append(_RoleChange(role, f"{role}: {' '.join(wrong)}", sql.SQL("ALTER ROLE {} " + " ".join(wrong))
                                       .format(sql.Identifier(role))))
    for role, password in ((APP_ROLE, app_password), (AUDITOR_ROLE, auditor_password)):
        if password and not _password_is(conn, role, password):
            changes.append(_RoleChange(role, f"{role}: new password", sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)), password=True))
        # Neither login role may act as the owner: that would let it switch off RLS.
        if _scalar(conn, IS_MEMBER, [role, OWNER_ROLE]):
            changes.append(_RoleChange(role, f"{role}: no longer a member of {OWNER_ROLE}", sql.SQL("REVOKE {} FROM {}")
                                       .format(sql.Identifier(OWNER_ROLE), sql.Identifier(role))))
    shared = {role: _databases_using(conn, role) for role in {c.role for c in changes}}
    blocked = [f"{c.description} (role used by database {', '.join(shared[c.role])})"
               for c in changes if shared[c.role]]
    if blocked and not allow_shared:
        raise SharedRoleChange(
            "roles are shared by every database of the server, and these changes would reach other databases: "
            + "; ".join(blocked) + ". Nothing was changed. If that is intended, run taskapi migrate "
            "--allow-shared-role-changes (or set TASKAPI_ALLOW_SHARED_ROLE_CHANGES=1)")
    for change in changes:
        conn.execute(change.statement)
        (report.passwords_set if change.password else report.roles_fixed).append(change.description)
    # The admin must be able to SET ROLE taskapi_owner (a superuser always can).
    if not _scalar(conn, IS_MEMBER, [conn.info.user, OWNER_ROLE]):
        conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(sql.Identifier(OWNER_ROLE)))
    conn.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
        sql.Identifier(conn.info.dbname), sql.Identifier(OWNER_ROLE)))
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(
        sql.Identifier(META_SCHEMA), sql.Identifier(OWNER_ROLE)))


@dataclass(frozen=True)
class _RoleChange:
    role: str
    description: str  # never the password itself
    statement: sql.Composed
    password: bool = False


IS_MEMBER: LiteralString = "SELECT pg_catalog.pg_has_role(%s::name, %s::name, 'MEMBER')"

# The other databases of the server that use a role: it owns something there or holds a privilege
# there (pg_shdepend), owns one, has settings for one, or is connected to one right now.
LIST_DATABASES_USING_ROLE: LiteralString = """
    WITH r AS (SELECT oid FROM pg_roles WHERE rolname = %(role)s),
    here AS (SELECT oid FROM pg_database WHERE datname = pg_catalog.current_database())
    SELECT d.datname FROM pg_shdepend s JOIN pg_database d ON d.oid = s.dbid
    WHERE s.refclassid = 'pg_catalog.pg_authid'::pg_catalog.regclass AND s.refobjid = (SELECT oid FROM r)
      AND s.dbid <> (SELECT oid FROM here)
    UNION
    SELECT d.datname FROM pg_database d WHERE d.datdba = (SELECT oid FROM r) AND d.oid <> (SELECT oid FROM here)
    UNION
    SELECT d.datname FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
    WHERE s.setrole = (SELECT oid FROM r) AND d.oid <> (SELECT oid FROM here)
    UNION
    SELECT a.datname FROM pg_stat_activity a
    WHERE a.usesysid = (SELECT oid FROM r) AND a.datid <> (SELECT oid FROM here)
    ORDER BY 1
"""


def _scalar(conn: psycopg.Connection, query: LiteralString, params: list[Any]) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None  # a SELECT without FROM returns one row
    return row[0]


def _databases_using(conn: psycopg.Connection, role: str) -> list[str]:
    return [name for (name,) in conn.execute(LIST_DATABASES_USING_ROLE, {"role": role})]


READ_PASSWORD_VERIFIER: LiteralString = "SELECT rolpassword FROM pg_authid WHERE rolname = %s"  # noqa: S105


def _password_is(conn: psycopg.Connection, role: str, password: str) -> bool:
    """Whether `role`'s password already is `password`: setting it again is then no change.

    A superuser reads the stored verifier and checks the password against it; an admin that may not
    read pg_authid (managed services) logs in as the role with it instead. False when it cannot tell.
    """
    try:
        with conn.transaction():  # a savepoint: the refusal must not end the caller's transaction
            row = conn.execute(READ_PASSWORD_VERIFIER, [role]).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        return _password_logs_in(conn, role, password)
    return row is not None and row[0] is not None and _verifier_matches(row[0], role, password)


_SCRAM_VERIFIER = re.compile(r"SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)")


def _verifier_matches(verifier: str, role: str, password: str) -> bool:
    """Check `password` against a stored SCRAM-SHA-256 (RFC 5803) or md5 verifier.

    PostgreSQL applies SASLprep to a non-ASCII password first; this does not, so such a password
    reads as different (and setting it again is reported as a change): never the other way round.
    """
    scram = _SCRAM_VERIFIER.fullmatch(verifier)
    if scram:
        iterations, salt, stored_key = int(scram[1]), base64.b64decode(scram[2]), scram[3]
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        return hmac.compare_digest(base64.b64encode(hashlib.sha256(client_key).digest()).decode(), stored_key)
    if verifier.startswith("md5"):
        expected = "md5" + hashlib.md5((password + role).encode(), usedforsecurity=False).hexdigest()
        return hmac.compare_digest(verifier, expected)
    return False


def _password_logs_in(conn: psycopg.Connection, role: str, password: str) -> bool:
    params = {**conn.info.get_parameters(), "user": role, "password": password, "connect_timeout": "5"}
    try:
        with psycopg.connect(make_conninfo(**params)) as probe:
            # Only a login that asked for the password proves it (trust authentication asks for none).
            return bool(probe.pgconn.used_password)
    except psycopg.Error:
        return False


def _ensure_ownership(conn: psycopg.Connection) -> None:
    """Hand back to taskapi_owner any object of the three schemas that someone gave to another role.

    The audit schema counts as much as the data: a role that owned taskapi_audit.findings() could make
    it report nothing, and the posture guard of the running API would never close.
    """
    rows = conn.execute(
        """
        SELECT pg_catalog.format('ALTER %%s %%s OWNER TO %%I',
                      CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
                                     WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'f' THEN 'FOREIGN TABLE'
                                     ELSE 'TABLE' END,
                      c.oid::regclass, %(owner)s::text)
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = ANY(%(schemas)s::text[])
          AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
          AND c.relowner <> pg_catalog.to_regrole(%(owner)s::text)
        UNION ALL
        SELECT pg_catalog.format('ALTER ROUTINE %%s OWNER TO %%I', p.oid::regprocedure, %(owner)s::text)
        FROM pg_proc p
        JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = ANY(%(schemas)s::text[]) AND p.proowner <> pg_catalog.to_regrole(%(owner)s::text)
        UNION ALL
        SELECT pg_catalog.format('ALTER SCHEMA %%I OWNER TO %%I', n.nspname, %(owner)s::text)
        FROM pg_namespace n
        WHERE n.nspname = ANY(%(schemas)s::text[]) AND n.nspowner <> pg_catalog.to_regrole(%(owner)s::text)
        """,
        {"schemas": [SCHEMA, AUDIT_SCHEMA, META_SCHEMA], "owner": OWNER_ROLE}).fetchall()
    for (statement,) in rows:
        log.warning("fixing ownership: %s", statement)
        conn.execute(statement)


def _apply_migrations(dsn_parts: dict[str, Any], folder: Path, report: MigrateReport) -> None:
    # Imported here: yoyo is only needed by this command, not by the server.
    from yoyo import get_backend, read_migrations  # type: ignore[import-untyped]

    dbname = dsn_parts.pop("dbname")
    # Every migration runs as taskapi_owner, so the owner owns what it creates; yoyo's own tables
    # go to taskapi_meta. yoyo 9 needs the postgresql+psycopg scheme to use psycopg 3.
    # The search_path names no schema but taskapi_meta, which only taskapi_owner may create objects in;
    # pg_catalog, not listed, is searched first. (Listing it first would make yoyo create its tables
    # there: unqualified CREATE TABLE goes to the first schema of the path.)
    dsn_parts["options"] = (dsn_parts.get("options", "") +
                            f" -c role={OWNER_ROLE} -c search_path={META_SCHEMA},pg_temp").strip()
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
    JOIN ROWS FROM (pg_catalog.unnest(%(oids)s::oid[]), pg_catalog.unnest(%(files)s::text[]),
                    pg_catalog.unnest(%(hashes)s::text[])) AS f(policy_oid, source_file, source_sha256)
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


# The manifest (sql/migrations/0003_manifest.sql): what defines isolation, as the catalogs say it is
# now that the migrations and policies are in place, replacing the previous record whole, in the
# transaction that applied the policies. findings() compares the live catalogs with it.
FORGET_MANIFEST: LiteralString = "DELETE FROM taskapi_audit.manifest"
RECORD_MANIFEST: LiteralString = """
    INSERT INTO taskapi_audit.manifest (kind, object, definition)
    SELECT kind, object, definition FROM taskapi_audit.live_manifest()
"""


def _record_manifest(conn: psycopg.Connection, report: MigrateReport) -> None:
    conn.execute(FORGET_MANIFEST)
    report.manifest_entries = conn.execute(RECORD_MANIFEST).rowcount
