"""`taskapi audit`: the database's own findings, then an active probe of isolation as the runtime role.

The findings are ``taskapi_audit.findings()`` (sql/migrations/0002_audit.sql), which the auditor role
may run. The probe writes tasks for two synthetic users as taskapi_app, inside one transaction that
is always rolled back, and proves that each user sees, changes and deletes only its own, that a
transaction without claims reaches nothing, and that the auditor reads like a user and writes
nothing. It needs a role that may ``SET ROLE taskapi_app`` (the admin DSN); with the auditor's DSN it
is skipped, and the report says so.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, LiteralString

import psycopg
from psycopg import sql

from .errors import first_line
from .migrate import APP_ROLE, AUDITOR_ROLE

Status = Literal["ok", "FAIL", "skipped"]


@dataclass(frozen=True)
class Finding:
    """One row of ``taskapi_audit.findings()``."""

    check: str
    severity: str
    object: str
    detail: str
    remedy: str


@dataclass(frozen=True)
class ProbeStep:
    """One claim of the active probe and whether the database bore it out."""

    name: str
    status: Status
    detail: str = ""


@dataclass
class AuditReport:
    """What `audit` found; `ok` is the verdict (no finding, no failed probe step)."""

    database: str
    user: str
    server_version: str
    findings: list[Finding] = field(default_factory=list)
    probe: list[ProbeStep] = field(default_factory=list)
    probe_skipped: str | None = None

    @property
    def ok(self) -> bool:
        return not self.findings and all(step.status != "FAIL" for step in self.probe)


# Who and where this audit runs, and whether this role may become the runtime and auditor roles.
DESCRIBE_SESSION: LiteralString = """
    SELECT pg_catalog.current_database(), current_user, pg_catalog.current_setting('server_version'),
           EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %(app)s
                   AND pg_catalog.pg_has_role(current_user, oid, 'MEMBER')),
           EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %(auditor)s
                   AND pg_catalog.pg_has_role(current_user, oid, 'MEMBER'))
"""

LIST_FINDINGS: LiteralString = 'SELECT "check", severity, object, detail, remedy FROM taskapi_audit.findings()'
# The first statement of the audit's transaction, itself schema-qualified: from here on every name
# resolves in pg_catalog first and never in a schema another role may create objects in.
PIN_SEARCH_PATH: LiteralString = "SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true)"


def audit(dsn: str, *, probe: bool = True) -> AuditReport:
    """Run ``findings()`` and, when `probe` and the role allows it, the active probe; change nothing.

    Everything runs in one transaction that is rolled back, whose first statement pins search_path
    (`PIN_SEARCH_PATH`): with an administrator's DSN this session has rights worth hijacking, and a
    transaction-local setting also holds behind a transaction-mode pooler, where a startup option
    would be refused. Raises `psycopg.Error` when the database cannot be reached or is not migrated.
    """
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10, application_name="taskapi audit") as conn:
        with conn.transaction(force_rollback=True):
            conn.execute(PIN_SEARCH_PATH)
            database, user, version, can_be_app, can_be_auditor = _one(conn.execute(
                DESCRIBE_SESSION, {"app": APP_ROLE, "auditor": AUDITOR_ROLE}))
            report = AuditReport(database=database, user=user, server_version=version)
            report.findings = [Finding(*row) for row in conn.execute(LIST_FINDINGS)]
            if not probe:
                report.probe_skipped = "not requested (--no-probe)"
            elif not can_be_app:
                report.probe_skipped = (f"role {user} cannot SET ROLE {APP_ROLE}; the probe writes as that role, so "
                                        "it needs DATABASE_ADMIN_URL (or --dsn with the admin DSN)")
            else:
                report.probe, report.probe_skipped = run_probe(conn, with_auditor=can_be_auditor)
    return report


# The probe's SQL, run as taskapi_app (and taskapi_auditor) exactly as the API's requests are: the
# identity is the transaction-local setting the policies read (api/db.py, SET_REQUEST_CONTEXT).
SET_CLAIMS: LiteralString = "SELECT pg_catalog.set_config('request.jwt.claims', %(claims)s, true)"
SET_PROBE_TIMEOUT: LiteralString = "SET LOCAL statement_timeout = '10s'"
INSERT_TASK: LiteralString = "INSERT INTO taskapi.tasks (title) VALUES ('taskapi audit probe') RETURNING id"
# Rows visible to the caller that are not its own (must be none), and whether its own task is among them.
COUNT_VISIBLE: LiteralString = """
    SELECT pg_catalog.count(*) FILTER (WHERE user_id IS DISTINCT FROM %(me)s::text),
           pg_catalog.count(*) FILTER (WHERE id = ANY(%(mine)s::uuid[]))
    FROM taskapi.tasks
"""
TOUCH_TASKS: LiteralString = "UPDATE taskapi.tasks SET title = title WHERE id = ANY(%(ids)s::uuid[])"
DELETE_TASKS: LiteralString = "DELETE FROM taskapi.tasks WHERE id = ANY(%(ids)s::uuid[])"
INSERT_TASK_AS: LiteralString = "INSERT INTO taskapi.tasks (user_id, title) VALUES (%(user_id)s, 'taskapi audit probe')"
GIVE_TASK: LiteralString = "UPDATE taskapi.tasks SET user_id = %(to)s WHERE id = %(id)s"


def run_probe(conn: psycopg.Connection, *, with_auditor: bool) -> tuple[list[ProbeStep], str | None]:
    """Prove isolation by trying it, in a transaction that is rolled back whatever happens.

    Returns the steps and, when the role could not become taskapi_app after all, why the probe was
    skipped. Only rows of the two synthetic users are ever written; a statement that would reach
    someone else's row is limited to the probe's own ids, so a broken policy exposes nothing real.
    """
    steps: list[ProbeStep] = []
    users = {label: f"taskapi-audit-probe-{uuid.uuid4().hex[:12]}-{label[-1].lower()}"
             for label in ("user A", "user B")}
    try:
        with conn.transaction(force_rollback=True):
            try:
                with conn.transaction():
                    _set_role(conn, APP_ROLE)
            except psycopg.errors.InsufficientPrivilege as exc:
                return [], f"cannot SET ROLE {APP_ROLE}: {first_line(exc)}"
            conn.execute(SET_PROBE_TIMEOUT)
            tasks = {}
            for label, user in users.items():
                _set_claims(conn, user)
                tasks[label] = _one(conn.execute(INSERT_TASK))[0]
            steps.append(ProbeStep(f"{APP_ROLE} creates one task for each synthetic user", "ok"))
            for label, other in (("user A", "user B"), ("user B", "user A")):
                _set_claims(conn, users[label])
                steps.append(_sees_only(conn, f"{label} sees its own task and no other row", users[label],
                                        [tasks[label]]))
                steps.append(_changes(conn, f"{label} cannot update {other}'s task", TOUCH_TASKS, [tasks[other]], 0))
                steps.append(_changes(conn, f"{label} cannot delete {other}'s task", DELETE_TASKS, [tasks[other]], 0))
                steps.append(_refused(conn, f"{label} cannot create a task as {other}", INSERT_TASK_AS,
                                      {"user_id": users[other]}))
                steps.append(_refused(conn, f"{label} cannot give its task to {other}", GIVE_TASK,
                                      {"to": users[other], "id": tasks[label]}))
                steps.append(_changes(conn, f"{label} updates its own task", TOUCH_TASKS, [tasks[label]], 1))
            _set_claims(conn, None)
            every = list(tasks.values())
            steps.append(_sees_only(conn, "without claims, no row is visible", None, []))
            steps.append(_changes(conn, "without claims, nothing is updated", TOUCH_TASKS, every, 0))
            steps.append(_changes(conn, "without claims, nothing is deleted", DELETE_TASKS, every, 0))
            steps.append(_refused(conn, "without claims, nothing is created", INSERT_TASK_AS,
                                  {"user_id": users["user A"]}))
            if with_auditor:
                _set_role(conn, AUDITOR_ROLE)
                _set_claims(conn, users["user A"])
                steps.append(_sees_only(conn, f"{AUDITOR_ROLE} impersonating user A sees user A's task and no "
                                        "other row", users["user A"], [tasks["user A"]]))
                steps.append(_refused(conn, f"{AUDITOR_ROLE} cannot create a task", INSERT_TASK_AS,
                                      {"user_id": users["user A"]}))
                steps.append(_refused(conn, f"{AUDITOR_ROLE} cannot update a task", TOUCH_TASKS,
                                      {"ids": [tasks["user A"]]}))
                steps.append(_refused(conn, f"{AUDITOR_ROLE} cannot delete a task", DELETE_TASKS,
                                      {"ids": [tasks["user A"]]}))
                _set_role(conn, APP_ROLE)
            else:
                steps.append(ProbeStep(f"{AUDITOR_ROLE} reads like a user and writes nothing", "skipped",
                                       f"this role cannot SET ROLE {AUDITOR_ROLE}"))
            for label, user in users.items():
                _set_claims(conn, user)
                steps.append(_changes(conn, f"{label} deletes its own task", DELETE_TASKS, [tasks[label]], 1))
    except psycopg.Error as exc:
        # An unexpected error is a failure of the probe, not of the audit: report it and go on.
        steps.append(ProbeStep("the probe ran to the end", "FAIL", first_line(exc)))
    return steps, None


def render_text(report: AuditReport) -> str:
    """The report as a table for a terminal."""
    lines = [f"taskapi audit of database {report.database} as {report.user} (PostgreSQL {report.server_version})",
             ""]
    if not report.findings:
        lines.append("findings: none (SELECT * FROM taskapi_audit.findings() returned no rows)")
    else:
        errors = sum(f.severity == "error" for f in report.findings)
        lines.append(f"findings: {len(report.findings)} (errors: {errors}, warnings: {len(report.findings) - errors})")
        widths = [max(len(h), *(len(v) for v in values)) for h, values in (
            ("SEVERITY", [f.severity for f in report.findings]), ("CHECK", [f.check for f in report.findings]))]
        lines.append(f"  {'SEVERITY':<{widths[0]}}  {'CHECK':<{widths[1]}}  OBJECT")
        for f in report.findings:
            lines.append(f"  {f.severity:<{widths[0]}}  {f.check:<{widths[1]}}  {f.object}")
            indent = " " * (6 + widths[0] + widths[1])  # under OBJECT
            lines.append(f"{indent}{f.detail}")
            lines.append(f"{indent}fix: {f.remedy}")
    lines.append("")
    if report.probe_skipped:
        lines.append(f"active probe: SKIPPED: {report.probe_skipped}")
    else:
        lines.append(f"active probe (as {APP_ROLE} and {AUDITOR_ROLE}, in a transaction rolled back):")
        for step in report.probe:
            lines.append(f"  {step.status:<7}  {step.name}" + (f": {step.detail}" if step.detail else ""))
    lines.append("")
    failures = sum(step.status == "FAIL" for step in report.probe)
    if report.ok:
        lines.append("result: PASS" + (" (findings only: the active probe did not run)" if report.probe_skipped
                                       else ""))
    else:
        lines.append(f"result: FAIL (findings: {len(report.findings)}, failed probe steps: {failures})")
    return "\n".join(lines)


def render_json(report: AuditReport) -> str:
    """The report as one JSON document: findings as ``findings()`` returns them, the probe's steps, `ok`."""
    body: dict[str, Any] = {
        "database": report.database,
        "user": report.user,
        "server_version": report.server_version,
        "findings": [asdict(f) for f in report.findings],
        "probe": {"ran": report.probe_skipped is None, "skipped_reason": report.probe_skipped,
                  "steps": [asdict(s) for s in report.probe]},
        "ok": report.ok,
    }
    return json.dumps(body, indent=2)


def _one(cursor: psycopg.Cursor[tuple[Any, ...]]) -> tuple[Any, ...]:
    row = cursor.fetchone()
    assert row is not None  # every statement passed here returns exactly one row
    return row


def _set_role(conn: psycopg.Connection, role: str) -> None:
    conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))


def _set_claims(conn: psycopg.Connection, user: str | None) -> None:
    # '' is what an unset setting reads like on a pooled connection; taskapi.current_user_id() is NULL.
    conn.execute(SET_CLAIMS, {"claims": json.dumps({"sub": user}) if user else ""})


def _sees_only(conn: psycopg.Connection, name: str, user: str | None, mine: list[Any]) -> ProbeStep:
    foreign, own = _one(conn.execute(COUNT_VISIBLE, {"me": user, "mine": mine}))
    ok = foreign == 0 and own == len(mine)
    return ProbeStep(name, "ok" if ok else "FAIL",
                     "" if ok else f"{foreign} row(s) of other users visible, {own} of {len(mine)} own")


def _changes(conn: psycopg.Connection, name: str, statement: LiteralString, ids: list[Any],
             expected: int) -> ProbeStep:
    rowcount = conn.execute(statement, {"ids": ids}).rowcount
    return ProbeStep(name, "ok" if rowcount == expected else "FAIL",
                     "" if rowcount == expected else f"{rowcount} row(s) affected, expected {expected}")


def _refused(conn: psycopg.Connection, name: str, statement: LiteralString, params: dict[str, Any]) -> ProbeStep:
    try:
        with conn.transaction():  # a savepoint: the refusal must not end the probe's transaction
            cur = conn.execute(statement, params)
    except psycopg.errors.InsufficientPrivilege:
        return ProbeStep(name, "ok")
    return ProbeStep(name, "FAIL", f"accepted ({cur.rowcount} row(s) affected), expected a refusal (42501)")

