"""What the benchmark measured: one `Run` of a load tool, and a scenario's `Result` over several runs.

A run either counts or says why not (`failure`): a load tool that exited non-zero, printed nothing
parsable, or got any answer other than success (a non-2xx status, a socket error or timeout, a
failed transaction) is a failed run, and a scenario with a failed run is FAILED, whatever its rate.
Only successes (2xx, committed transactions) count as throughput.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Run:
    """One run of wrk or pgbench."""

    seconds: float = 0.0
    responses: int = 0  # every answer (wrk) or transaction (pgbench) that completed
    ok: int = 0  # 2xx answers, transactions without error
    ok_per_s: float = 0.0
    not_ok: dict[str, int] = field(default_factory=dict)  # by status ("404", "503") or "failed" (pgbench)
    socket_errors: dict[str, int] = field(default_factory=dict)  # connect, read, write, timeout (wrk)
    p50_ms: float | None = None
    p99_ms: float | None = None
    cpu_us_per_request: float | None = None  # the server's, when it ran through the server
    extra: dict[str, int] = field(default_factory=dict)  # counters the wrk script reported
    failure: str | None = None

    def fail(self, reason: str) -> None:
        """Mark the run failed; the first reason stays (it is usually the cause of the others)."""
        if self.failure is None:
            self.failure = reason


@dataclass
class Result:
    """A scenario at one concurrency: its runs, reported by their medians."""

    name: str
    concurrency: int
    runs: list[Run] = field(default_factory=list)
    peak_rss_mb: float | None = None
    note: str = ""

    @property
    def failure(self) -> str | None:
        if not self.runs:
            return "no run"
        failed = [(i, run.failure) for i, run in enumerate(self.runs, 1) if run.failure]
        if not failed:
            return None
        return "; ".join(f"run {i}: {reason}" for i, reason in failed)

    @property
    def ok_per_s(self) -> float:
        return _median([run.ok_per_s for run in self.runs]) or 0.0

    @property
    def p50_ms(self) -> float | None:
        return _median([run.p50_ms for run in self.runs])

    @property
    def p99_ms(self) -> float | None:
        return _median([run.p99_ms for run in self.runs])

    @property
    def cpu_us_per_request(self) -> float | None:
        return _median([run.cpu_us_per_request for run in self.runs])

    @property
    def not_ok(self) -> int:
        return sum(sum(run.not_ok.values()) for run in self.runs)

    @property
    def socket_errors(self) -> int:
        return sum(sum(run.socket_errors.values()) for run in self.runs)

    def summary(self) -> dict[str, Any]:
        """The result and its runs as JSON-ready values."""
        return {
            "name": self.name, "concurrency": self.concurrency, "failed": self.failure,
            "ok_per_s_median": self.ok_per_s, "p50_ms_median": self.p50_ms, "p99_ms_median": self.p99_ms,
            "cpu_us_per_request_median": self.cpu_us_per_request, "not_ok": self.not_ok,
            "socket_errors": self.socket_errors, "peak_rss_mb": self.peak_rss_mb, "note": self.note,
            "runs": [vars(run) for run in self.runs],
        }


def _median(values: list[float | None]) -> float | None:
    """The median of the values, or None when any run has none (a failed run has no latencies)."""
    present = [v for v in values if v is not None]
    if not present or len(present) != len(values):
        return None
    return statistics.median(present)
