"""The `taskapi` command: argument parsing only; the work is in the modules it calls."""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import sys
from pathlib import Path

from .config import ConfigError, Settings, jwt_secret_from_env, require_strong_secret
from .errors import first_line

EXIT_CONFIG = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="taskapi", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    migrate = commands.add_parser(
        "migrate", help="create roles, apply migrations and policies (DATABASE_ADMIN_URL)",
        description="Create the roles, apply the migrations and sql/policies/, record the manifest. Roles are shared "
                    "by every database of the server: a change to a role that another database uses (an "
                    "attribute, a new password, a membership) is refused unless allowed.")
    migrate.add_argument("--allow-shared-role-changes", action="store_true",
                         help="change roles even when another database of the server uses them "
                              "(also TASKAPI_ALLOW_SHARED_ROLE_CHANGES=1)")
    commands.add_parser("serve", help="run the API against DATABASE_URL")
    commands.add_parser("dev", help="embedded PostgreSQL + migrate + serve, for trying it out")
    audit = commands.add_parser(
        "audit", help="report the isolation findings and probe isolation (DATABASE_ADMIN_URL or DATABASE_AUDITOR_URL)",
        description="Print taskapi_audit.findings() and, with a DSN that may SET ROLE taskapi_app, an active "
                    "probe of isolation in a transaction that is rolled back. Exit status: 0 no finding and no "
                    "failed probe step, 1 otherwise, 2 when the audit could not run.")
    audit.add_argument("--dsn", help="the database to audit (default: DATABASE_ADMIN_URL, else DATABASE_AUDITOR_URL)")
    audit.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    audit.add_argument("--no-probe", action="store_true", help="run findings() only; write nothing, even as admin")
    commands.add_parser("expire-keys", help="delete every user's expired Idempotency-Keys (DATABASE_ADMIN_URL)",
                        description="Each create with an Idempotency-Key already deletes its user's expired keys; "
                                    "this removes those of users who stopped creating tasks. Safe at any time, e.g. "
                                    "daily from the scheduler that runs migrate.")
    token = commands.add_parser("token", help="print an HS256 token signed with JWT_SECRET")
    token.add_argument("--sub", required=True, help="the user id to put in the token")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    args = parser.parse_args(argv)
    try:
        return {"migrate": _migrate, "serve": _serve, "dev": _dev, "token": _token,
                "audit": _audit, "expire-keys": _expire_keys}[args.command](args)
    except ConfigError as exc:
        print(f"taskapi: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


def _migrate(args: argparse.Namespace) -> int:
    admin_dsn = os.environ.get("DATABASE_ADMIN_URL", "").strip()
    if not admin_dsn:
        raise ConfigError("DATABASE_ADMIN_URL is not set: give a DSN allowed to create roles "
                          "(the server's DATABASE_URL is not enough)")
    allow = args.allow_shared_role_changes or os.environ.get("TASKAPI_ALLOW_SHARED_ROLE_CHANGES", "") in ("1", "true")
    return _run_migrate(admin_dsn, allow_shared_role_changes=allow)


def _run_migrate(admin_dsn: str, *, allow_shared_role_changes: bool = False) -> int:
    import psycopg

    from .migrate import SharedRoleChange, migrate

    try:
        report = migrate(admin_dsn, app_password=os.environ.get("TASKAPI_APP_PASSWORD") or None,
                         auditor_password=os.environ.get("TASKAPI_AUDITOR_PASSWORD") or None,
                         allow_shared_role_changes=allow_shared_role_changes)
    except SharedRoleChange as exc:
        print(f"taskapi migrate: refused: {exc}", file=sys.stderr)
        return 1
    except psycopg.Error as exc:
        print(f"taskapi migrate: failed: {first_line(exc)}", file=sys.stderr)
        return 1
    for role in report.roles_created:
        print(f"created role {role}")
    for fix in report.roles_fixed:
        print(f"fixed role {fix}")
    for change in report.passwords_set:
        print(f"set password: {change}")
    for migration in report.migrations_applied:
        print(f"applied migration {migration}")
    print(f"applied policies from {', '.join(report.policy_files)}")
    print(f"recorded the manifest ({report.manifest_entries} entries)")
    return 0


def _expire_keys(args: argparse.Namespace) -> int:
    import psycopg

    from .idempotency import expire_keys

    admin_dsn = os.environ.get("DATABASE_ADMIN_URL", "").strip()
    if not admin_dsn:
        raise ConfigError("DATABASE_ADMIN_URL is not set: give the DSN taskapi migrate uses")
    try:
        deleted = expire_keys(admin_dsn)
    except psycopg.Error as exc:
        print(f"taskapi expire-keys: failed: {first_line(exc)}", file=sys.stderr)
        return 1
    print(f"deleted {deleted} expired idempotency keys")
    return 0


def _audit(args: argparse.Namespace) -> int:
    import psycopg

    from .audit import audit, render_json, render_text

    # The admin DSN first: only it can run the active probe. The auditor's reads the findings only.
    dsn = (args.dsn or os.environ.get("DATABASE_ADMIN_URL", "") or os.environ.get("DATABASE_AUDITOR_URL", "")).strip()
    if not dsn:
        raise ConfigError("no database to audit: give --dsn, or set DATABASE_ADMIN_URL (findings and the active "
                          "probe) or DATABASE_AUDITOR_URL (findings only)")
    try:
        report = audit(dsn, probe=not args.no_probe)
    except psycopg.Error as exc:
        hint = " (run taskapi migrate)" if getattr(exc, "sqlstate", None) in ("42883", "3F000", "42P01") else ""
        print(f"taskapi audit: cannot audit: {first_line(exc)}{hint}", file=sys.stderr)
        return EXIT_CONFIG
    print(render_json(report) if args.json else render_text(report))
    return 0 if report.ok else 1


def _serve(args: argparse.Namespace) -> int:
    from .server import StartupError, preflight, run

    settings = Settings.from_env()
    try:
        preflight(settings)
        run(settings)
    except StartupError as exc:
        print(f"taskapi: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


def _dev(args: argparse.Namespace) -> int:
    from . import embedded
    from .auth import mint_token

    if not os.environ.get("DATABASE_URL"):
        data_dir = Path(os.environ.get("TASKAPI_DATA_DIR") or ".taskapi")
        print(f"taskapi dev: starting the embedded PostgreSQL in {data_dir / 'pgdata'} ...", file=sys.stderr)
        server = embedded.start(data_dir / "pgdata")
        embedded.ensure_database(server.dsn(), embedded.DEV_DATABASE)
        os.environ["DATABASE_ADMIN_URL"] = server.dsn(dbname=embedded.DEV_DATABASE)
        os.environ["DATABASE_URL"] = server.dsn(user="taskapi_app", dbname=embedded.DEV_DATABASE)
    if os.environ.get("DATABASE_ADMIN_URL") and _run_migrate(os.environ["DATABASE_ADMIN_URL"]) != 0:
        return 1
    generated = jwt_secret_from_env() is None
    if generated:
        # A throwaway secret for this run only: the tokens printed below stop working at exit.
        os.environ["JWT_SECRET"] = secrets.token_urlsafe(32)
    settings = Settings.from_env()
    base = f"http://{settings.host}:{settings.port}"
    assert settings.jwt_secret is not None
    alice = mint_token(settings.jwt_secret, "alice", ttl_s=24 * 3600)
    bob = mint_token(settings.jwt_secret, "bob", ttl_s=24 * 3600)
    print(dev_banner(base, alice=alice, bob=bob), file=sys.stderr)
    if generated:
        print("(dev-only secret generated for this run; set JWT_SECRET to keep tokens across runs)\n",
              file=sys.stderr)
    return _serve(args)


def dev_banner(base: str, *, alice: str, bob: str) -> str:
    """What `taskapi dev` prints: where the API and its docs are, and shell lines to paste, for two users.

    Every curl line ends its output with a newline (`-w '\\n'`), so the shell's prompt does not stick to
    the JSON. The 403 example reads alice's task with bob's token: the task's address comes from the
    create's `Location` header (curl 7.84 or later prints it with `%header{location}`).
    """
    return f"""
taskapi dev: serving {base}  (Ctrl-C stops it)
  API docs (Swagger UI, works offline): {base}/schema
  OpenAPI document:                     {base}/schema/openapi.json

Tokens for two users, "alice" and "bob" (valid 24 h); paste the indented lines into a shell:
  ALICE={shlex.quote(f"Authorization: Bearer {alice}")}
  BOB={shlex.quote(f"Authorization: Bearer {bob}")}

alice creates a task (its address is the answer's Location header), then lists her tasks:
  TASK=$(curl -s -o /dev/null -w '%header{{location}}' -X POST {base}/api/tasks -H "$ALICE" \\
         -H 'Content-Type: application/json' -d '{{"title": "Buy milk"}}'); echo "$TASK"
  curl -s -w '\\n' {base}/api/tasks -H "$ALICE"

bob sees none of alice's tasks, and reading hers answers 403 forbidden:
  curl -s -w '\\n' {base}/api/tasks -H "$BOB"
  curl -s -w '\\n' {base}$TASK -H "$BOB"
"""


def _token(args: argparse.Namespace) -> int:
    from .auth import MAX_SUB_LENGTH, mint_token

    secret = jwt_secret_from_env()
    if not secret:
        raise ConfigError("JWT_SECRET (or BETTER_AUTH_SECRET) is not set: it signs the token")
    require_strong_secret(secret)
    if not args.sub or len(args.sub) > MAX_SUB_LENGTH:
        raise ConfigError("--sub must be 1 to 255 characters")
    if args.ttl < 1:
        raise ConfigError("--ttl must be a positive number of seconds")
    print(mint_token(secret, args.sub, ttl_s=args.ttl))
    return 0



if __name__ == "__main__":
    sys.exit(main())
