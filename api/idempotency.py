"""Idempotency-Key on POST /api/tasks (IETF httpapi idempotency-key draft; docs/CONTRACT.md section 9).

The database does the work, in the request's one transaction: `taskapi.create_task_once`
(sql/migrations/0005_idempotency_keys.sql) creates the task and records its 201 under (caller, key),
or returns the 201 recorded before, or says the key is in flight or was used for another request.
This module checks the key's syntax, fingerprints the request, and removes every user's expired keys
for `taskapi expire-keys`.
"""

from __future__ import annotations

import datetime
import hashlib
import re
from typing import Any, LiteralString

import msgspec
import psycopg
from litestar import Request

from .errors import validation_error
from .pipeline import Statement

HEADER = "Idempotency-Key"
KEY_MAX = 255
# 1..255 visible ASCII characters. The draft makes the value a structured-field string, so a client may
# send it quoted: the quotes are then part of the key, which changes nothing as long as every retry
# sends the same bytes.
_KEY = re.compile(r"[\x21-\x7e]{1,255}")

CREATE_TASK_ONCE = Statement("""
SELECT r.outcome, r.task_id, r.body, r.etag
FROM taskapi.create_task_once(%(key)s, %(request_hash)s, %(title)s, %(description)s, %(completed)s::boolean,
                              %(due_at)s::timestamptz, %(priority)s::smallint, %(tags)s::text[],
                              %(recurrence)s) AS r
""")


def idempotency_key(request: Request[Any, Any, Any]) -> str | None:
    """The request's Idempotency-Key, or None without one; a 400 naming the header when it is not a key."""
    values = request.headers.getall(HEADER.lower(), [])
    if not values:
        return None
    if len(values) > 1:
        raise validation_error(HEADER, "send it once")
    if not _KEY.fullmatch(values[0]):
        raise validation_error(HEADER, f"must be 1 to {KEY_MAX} visible ASCII characters (no spaces)")
    return values[0]


def request_hash(values: dict[str, Any]) -> str:
    """The fingerprint of a create: SHA-256 of its cleaned values in one canonical JSON form.

    The values the task is created from, not the body's bytes: white space, the order of the fields,
    a default sent or left out, a title's surrounding spaces, or a due_at written in another offset do
    not make a retry "another request"; any difference in what would be stored does.
    """
    canonical = {name: _canonical(value) for name, value in sorted(values.items())}
    return hashlib.sha256(msgspec.json.encode(canonical)).hexdigest()


def _canonical(value: Any) -> Any:
    if isinstance(value, datetime.datetime):  # one instant, one form, whatever offset it was written with
        return value.astimezone(datetime.UTC).isoformat()
    return value


# Expired keys of every user, as taskapi_owner. The table forces row-level security on its owner too,
# and no policy lets anyone but the key's own user reach a row, so the owner lifts FORCE for this one
# statement inside the transaction: other sessions never see the table without it (the ALTER's lock
# holds them until COMMIT, and a failure rolls it back). lock_timeout keeps a long transaction on the
# table from queueing every create with a key behind this one.
EXPIRE_KEYS: tuple[LiteralString, ...] = (
    "SET LOCAL lock_timeout = '5s'",
    "SET LOCAL ROLE taskapi_owner",
    "ALTER TABLE taskapi.idempotency_keys NO FORCE ROW LEVEL SECURITY",
    "DELETE FROM taskapi.idempotency_keys WHERE expires_at <= pg_catalog.now()",
    "ALTER TABLE taskapi.idempotency_keys FORCE ROW LEVEL SECURITY",
)


def expire_keys(admin_dsn: str) -> int:
    """Delete every user's expired Idempotency-Keys in one transaction; return how many.

    For users who stopped creating tasks with keys: everyone else's expired keys already go with their
    next create. Needs the admin DSN of `taskapi migrate` (a role that may SET ROLE taskapi_owner).
    Raises `psycopg.Error`.
    """
    from .migrate import admin_conninfo  # an admin session: search_path pinned from its first statement

    with psycopg.connect(admin_conninfo(admin_dsn), autocommit=True) as conn, conn.transaction():
        deleted = 0
        for statement in EXPIRE_KEYS:
            cursor = conn.execute(statement)
            if statement.startswith("DELETE"):
                deleted = cursor.rowcount
        return deleted
