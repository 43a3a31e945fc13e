"""The posture guard: the API serves only while the database reports no isolation error.

At start and every ``POSTURE_CHECK_S`` seconds the guard runs ``taskapi_audit.findings()``
(sql/migrations/0002_audit.sql) through the app's pool. While a finding of severity ``error`` stands,
/ready answers 503 naming the checks and every /api request 503 (issue #4): the API fails closed
rather than serve from a database whose isolation was weakened by hand. Requests read the verdict
without a round trip; it clears at the first check that finds no error.

When ``findings()`` cannot run because the database is away (connection lost, timeout, pool
exhausted), the verdict stays as it was: requests meet that outage on their own. When it cannot run
because it is missing or refused (dropped, EXECUTE revoked, schema not migrated), the guard would be
blind, so it closes with the pseudo-check `findings_unavailable`.
"""

from __future__ import annotations

import asyncio
import logging
import math

from .db import Database
from .errors import ApiError

log = logging.getLogger("taskapi.posture")

# The name /ready reports while findings() itself is missing or refused; never a check of findings().
FINDINGS_UNAVAILABLE = "findings_unavailable"
# undefined_function, undefined_table, invalid_schema_name, insufficient_privilege: findings() is gone
# or this role may not run it, which a careless REVOKE or DROP SCHEMA could cause; not an outage.
_BLINDING_SQLSTATES = frozenset({"42883", "42P01", "3F000", "42501"})


class PostureGuard:
    """The last verdict of ``findings()``; `check` refreshes it, `run` does so every `interval_s`."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        # A client retrying sooner than the next check would meet the same verdict.
        self.retry_after = str(max(1, math.ceil(interval_s)))
        self.failing: tuple[str, ...] = ()
        self._findings: frozenset[tuple[str, str, str]] = frozenset()

    @property
    def closed(self) -> bool:
        """True while a finding of severity ``error`` stands: /api must not serve."""
        return bool(self.failing)

    async def check(self, db: Database) -> None:
        """Run ``findings()`` once and take its verdict; when it cannot run, keep the last one."""
        try:
            rows = await db.findings()
        except ApiError as exc:
            cause = exc.__cause__ or exc  # the driver's message, for the log line only
            if exc.sqlstate not in _BLINDING_SQLSTATES:
                # The database is away or overloaded: closing would turn every outage into a posture
                # alarm, and opening would serve from a database nobody has checked.
                log.warning("posture check could not run (%s); keeping the last verdict", _first_line(cause))
                return
            rows = [(FINDINGS_UNAVAILABLE, "error", f"taskapi_audit.findings(): {_first_line(cause)}")]
        findings = frozenset((check, severity, obj) for check, severity, obj in rows)
        if findings != self._findings:
            self._report(findings)
        self._findings = findings
        self.failing = tuple(sorted({check for check, severity, _ in findings if severity == "error"}))

    async def run(self, db: Database) -> None:
        """Check every `interval_s` seconds until cancelled (at shutdown)."""
        while True:
            await asyncio.sleep(self.interval_s)
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
            log.info("isolation posture restored; /api serves again")
        if warnings:
            log.warning("isolation posture warnings: %s", "; ".join(warnings))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
