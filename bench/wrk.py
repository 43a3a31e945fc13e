"""Running wrk: one run of a Lua script, checked and turned into a `Run`.

The scripts (scenarios.lua, idle.lua) load report.lua, which ends each run with one line,
`BENCH {...}`: statuses counted apart, socket errors, latency percentiles. A run is failed when wrk
exits non-zero, when that line is missing or unreadable, when nothing was answered, when any answer
was not a 2xx, when any socket error or timeout occurred, and when the script's status count does not
add up to wrk's response count.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from bench.measure import Run

HERE = Path(__file__).resolve().parent
SCENARIOS_LUA = HERE / "scenarios.lua"
IDLE_LUA = HERE / "idle.lua"
_REPORT_LINE = re.compile(r"^BENCH (\{.*\})$", re.MULTILINE)


def run_wrk(wrk: str, *, url: str, threads: int, connections: int, seconds: int, script: Path,
            script_args: list[str], timeout_s: int = 5) -> Run:
    """Run wrk once with `script`; never raises for what the run itself got wrong (see `Run.failure`)."""
    command = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", f"{timeout_s}s",
               "-s", str(script), url, "--", *script_args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + timeout_s + 60)
    except subprocess.TimeoutExpired:
        return Run(failure=f"wrk did not finish within {seconds + timeout_s + 60} s")
    return parse(done.returncode, done.stdout, done.stderr)


def parse(returncode: int, stdout: str, stderr: str) -> Run:
    """A `Run` from wrk's exit status and output (report.lua's BENCH line)."""
    run = Run()
    if returncode != 0:
        run.fail(f"wrk exited with status {returncode}: {_last_line(stderr or stdout)}")
    match = _REPORT_LINE.search(stdout)
    if match is None:
        run.fail("wrk printed no BENCH line (did the script fail?): " + _last_line(stderr or stdout))
        return run
    try:
        data = json.loads(match[1])
        run.seconds = data["duration_us"] / 1e6
        run.responses = int(data["requests"])
        statuses = {str(k): int(v) for k, v in data["statuses"].items()}
        run.socket_errors = {k: int(v) for k, v in data["errors"].items() if v}
        latency = data["latency_us"]
        extra = {str(k): int(v) for k, v in data["extra"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        run.fail(f"wrk's BENCH line is not what report.lua prints ({exc!r}): {match[1][:200]}")
        return run
    run.ok = sum(n for status, n in statuses.items() if status.startswith("2") and len(status) == 3)
    run.not_ok = {status: n for status, n in statuses.items() if not (status.startswith("2") and len(status) == 3)}
    run.ok_per_s = run.ok / run.seconds if run.seconds > 0 else 0.0
    run.extra = extra
    if run.responses:
        run.p50_ms, run.p99_ms = latency["p50"] / 1000, latency["p99"] / 1000
    if run.responses == 0:
        run.fail("no response at all")
    if sum(statuses.values()) != run.responses:
        run.fail(f"wrk counted {run.responses} responses, the script {sum(statuses.values())} statuses")
    if run.not_ok:
        run.fail("non-2xx answers: " + ", ".join(f"{n} x {status}" for status, n in sorted(run.not_ok.items())))
    if run.socket_errors:
        run.fail("socket errors: " + ", ".join(f"{kind} {n}" for kind, n in sorted(run.socket_errors.items())))
    if extra.get("reused"):
        run.fail(f"ran out of fresh tokens: {extra['reused']} requests reused one (not cold)")
    if extra.get("wrapped"):
        run.fail(f"ran out of tasks to delete: {extra['wrapped']} requests reused one")
    return run


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else "(no output)"
