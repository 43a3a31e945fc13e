"""The posture guard: the API serves only while the database reports no isolation error.

At start and every ``POSTURE_CHECK_S`` seconds the guard runs ``taskapi_audit.findings()``
(sql/migrations/0003_manifest.sql) through the app's pool. While a finding of severity ``error``
stands, /ready answers 503 naming the checks and every /api request 503 (issue #4): the API fails
closed rather than serve from a database whose isolation was weakened by hand. Requests read the
verdict without a round trip; it clears at the first check that finds no error.

The guard fails closed (issue #9): it is closed until a first check has completed, and whenever
``findings()`` has not completed on two consecutive checks (a lock held on the audit tables, a
timeout, the database away, any error) it closes with the pseudo-check `findings_unavailable` until
one completes again. One failed check keeps the last verdict, so a single lost connection does not
turn into a 503 for everyone; the next check then comes sooner (`RETRY_S`). When ``findings()`` is
missing or refused (dropped, EXECUTE revoked, schema not migrated) the guard is blind: it closes at
once. Each check runs under a statement timeout of one interval (2 s at least), so a blocked check
cannot delay the next one by much more than that.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Protocol

from .errors import ApiError, first_line
from .pipeline import Params, Row, Statement

log = logging.getLogger("taskapi.posture")

# The name /ready reports while findings() itself is missing or refused; never a check of findings().
FINDINGS_UNAVAILABLE = "findings_unavailable"
# undefined_function, undefined_table, invalid_schema_name, insufficient_privilege: findings() is gone
# or this role may not run it, which a careless REVOKE or DROP SCHEMA could cause; not an outage.
_BLINDING_SQLSTATES = frozenset({"42883", "42P01", "3F000", "42501"})
# How many checks in a row may fail before the guard closes: one keeps the last verdict.
FAILURES_TO_CLOSE = 2
# How soon to check again after a failed check (or while closed for it), when the interval is longer.
RETRY_S = 0.5
# A check's statement timeout is one interval, within these bounds (milliseconds): at least 2 s, so a
# check that merely runs slow on a loaded database server is not taken for one that cannot complete.
MIN_CHECK_TIMEOUT_MS = 2000

# Every problem the database reports about its own isolation (sql/migrations/0003_manifest.sql), run
# with no identity, like any request through the pool.
LIST_FINDINGS = Statement('SELECT "check", severity, object FROM taskapi_audit.findings()')


class Pool(Protocol):
    """What the guard needs of api/db.py's `Database`."""

    async def fetch_all(self, user_id: str | None, statement: Statement, params: Params, *,
                        statement_timeout_ms: int | None = None) -> list[Row]: ...


class PostureGuard:
    """The last verdict of ``findings()``; `check` refreshes it, `run` does so every `interval_s`."""

    def __init__(self, interval_s: float, *, max_timeout_ms: int = 5000) -> None:
        self.interval_s = interval_s
        # A client retrying sooner than the next check would meet the same verdict.
        self.retry_after = str(max(1, math.ceil(interval_s)))
        self.timeout_ms = max(MIN_CHECK_TIMEOUT_MS, min(max_timeout_ms, round(interval_s * 1000)))
        # Closed until a first check completes: nobody has looked at this database yet.
        self.failing: tuple[str, ...] = (FINDINGS_UNAVAILABLE,)
        self.failures = 0
        self._findings: frozenset[tuple[str, str, str]] = frozenset(
            {(FINDINGS_UNAVAILABLE, "error", "no check has completed yet")})

    @property
    def closed(self) -> bool:
        """True while a finding of severity ``error`` stands: /api must not serve."""
        return bool(self.failing)

    async def check(self, db: Pool) -> None:
        """Run ``findings()`` once and take its verdict (see the module's docstring for failures)."""
        try:
            rows = [(_text(check), _text(severity), _text(obj)) for check, severity, obj in
                    await db.fetch_all(None, LIST_FINDINGS, {}, statement_timeout_ms=self.timeout_ms)]
        except ApiError as exc:
            cause = exc.__cause__ or exc  # the driver's message, for the log line only
            self.failures += 1
            if exc.sqlstate in _BLINDING_SQLSTATES:
                rows = [(FINDINGS_UNAVAILABLE, "error", f"taskapi_audit.findings(): {first_line(cause)}")]
            elif self.failures < FAILURES_TO_CLOSE:
                # One lost connection or slow check: the last verdict stands until the next check.
                log.warning("posture check could not run (%s); keeping the last verdict until the next check",
                            first_line(cause))
                return
            else:
                # Nobody can say the posture is sound: a lock on the audit tables must not keep the
                # API serving on the verdict of a check from before someone weakened the policies.
                if self.failures == FAILURES_TO_CLOSE:
                    log.warning("posture check could not run again (%s); closing until one completes",
                                first_line(cause))
                rows = [(FINDINGS_UNAVAILABLE, "error",
                         f"taskapi_audit.findings() did not complete on {FAILURES_TO_CLOSE} checks in a row")]
        else:
            self.failures = 0
        findings = frozenset((check, severity, obj) for check, severity, obj in rows)
        if findings != self._findings:
            self._report(findings)
        self._findings = findings
        self.failing = tuple(sorted({check for check, severity, _ in findings if severity == "error"}))

    async def run(self, db: Pool) -> None:
        """Check every `interval_s` seconds (`RETRY_S` after a failure) until cancelled (at shutdown)."""
        while True:
            await asyncio.sleep(min(self.interval_s, RETRY_S) if self.failures else self.interval_s)
            try:
                await self.check(db)
            except Exception:  # a bug in one check must not end the guard and freeze its verdict
                log.exception("posture check failed")

    def _report(self, findings: frozenset[tuple[str, str, str]]) -> None:
        errors = sorted(f"{check} ({obj})" for check, severity, obj in findings if severity == "error")
        warnings = sorted(f"{check} ({obj})" for check, severity, obj in findings if severity != "error")
        if errors:
            log.error("isolation posture broken, /api answers 503 until fixed (SELECT * FROM "
                      "taskapi_audit.findings()): %s", "; ".join(errors))
        elif self.failing:
            log.info("isolation posture sound; /api serves")
        if warnings:
            log.warning("isolation posture warnings: %s", "; ".join(warnings))


def _text(value: bytes | None) -> str:
    return "" if value is None else value.decode()
