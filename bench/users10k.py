"""`python -m bench.users10k`: 10,000 users on their own keep-alive connections, then all at once.

Two measurements of issue #11 against one `taskapi serve` (WORKERS=2 unless told otherwise):

- **users**: every user holds one keep-alive connection with its own token and sends a request about
  every `--think` seconds (uniform in 0.5x..1.5x, after the previous answer) for `--seconds`: 70 % list,
  15 % toggle, 10 % create, 5 % get of one of its own tasks. Reports requests/s, p50/p99 of every
  answer, errors by kind, non-2xx by status, and the server's memory: peak RSS (VmHWM) of each of its
  processes and the peak of their summed PSS (/proc/<pid>/smaps_rollup), sampled every second.
- **burst**: then every one of those connections sends one request (the same mix) at the same moment.
  Reports the share answered within 2 s of the burst (a 2xx, or a 503 with Retry-After), the 503s, and
  every error: a connection closed or reset, a timeout, a malformed or unexpected answer.

Every response is checked: status, framing, the JSON body (a task list holds only the caller's tasks,
a task is the caller's), and a 503 must carry the contract's JSON error and a Retry-After.

Without `--url`, it starts an embedded PostgreSQL, migrates, seeds `--users` x `--tasks-per-user`
tasks and runs `taskapi serve` itself; with `--url` (and `--secret`, `--server-pid`), it drives a
server that is already running against a database seeded by an earlier run (`--keep`).
The functions `run_users` and `run_burst` are what `python -m bench` can call.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import resource
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import msgspec
import psycopg
import uvloop
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench.data import SEED_TASKS
from bench.stack import child_pids

ROOT = Path(__file__).resolve().parent.parent
USER_PREFIX = "u10k0usr0k2m9q4w8e5r1t6y3"
MIX = (("list", 70), ("toggle", 15), ("create", 10), ("get", 5))
BUDGET_S = 2.0  # the seed's latency budget: 95 % of requests within 2 s
CONNECT_CONCURRENCY = 256  # connection attempts in flight while opening the 10,000 (the listen backlog is 4,096)

# A few task ids of each user, for toggle and get.
SAMPLE_TASK_IDS = """
SELECT user_id, (array_agg(id))[1:%(per_user)s]::text[] FROM taskapi.tasks
WHERE user_id LIKE %(pattern)s GROUP BY user_id
"""


# --- results ----------------------------------------------------------------------------------------------

@dataclass
class Tally:
    """What came back, request by request; `latencies_ms` of every answer (2xx or not)."""

    requests: int = 0
    ok: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    ok_latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)  # no valid answer: by kind
    non_2xx: Counter[int] = field(default_factory=Counter)  # valid answers that are not 2xx: by status
    shed_with_retry_after: int = 0
    shed_latencies_ms: list[float] = field(default_factory=list)
    retry_after_values: Counter[str] = field(default_factory=Counter)

    def record(self, op: str, outcome: Outcome) -> None:
        self.requests += 1
        if outcome.error is not None:
            self.errors[outcome.error] += 1
            return
        assert outcome.status is not None
        self.latencies_ms.append(outcome.seconds * 1000)
        if 200 <= outcome.status < 300:
            self.ok += 1
            self.ok_latencies_ms.append(outcome.seconds * 1000)
        else:
            self.non_2xx[outcome.status] += 1
            if outcome.status == 503 and outcome.retry_after is not None:
                self.shed_with_retry_after += 1
                self.shed_latencies_ms.append(outcome.seconds * 1000)
                self.retry_after_values[outcome.retry_after] += 1


@dataclass
class Memory:
    """The server's processes: peak RSS of each (VmHWM, MiB) and the peak of their summed PSS (MiB)."""

    peak_rss_mib: dict[str, float] = field(default_factory=dict)
    rss_before_mib: dict[str, float] = field(default_factory=dict)
    peak_total_pss_mib: float = 0.0
    total_pss_before_mib: float = 0.0


@dataclass
class UsersResult:
    users: int
    seconds: float
    think_s: float
    connected: int
    connect_errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    requests: int
    ok: int
    errors: dict[str, int]
    non_2xx: dict[str, int]
    by_op: dict[str, int]
    memory: Memory


@dataclass
class BurstResult:
    requests: int
    answered_within_budget: int  # a 2xx or a 503 with Retry-After, within BUDGET_S of the burst
    ok: int
    ok_within_budget: int
    shed_with_retry_after: int
    retry_after_values: dict[str, int]
    p50_ms: float
    p99_ms: float
    max_ms: float
    ok_p99_ms: float
    shed_p50_ms: float
    shed_p99_ms: float
    errors: dict[str, int]
    non_2xx: dict[str, int]
    write_ms: float  # how long the client took to write all the requests
    memory: Memory

    @property
    def share_within_budget(self) -> float:
        return self.answered_within_budget / self.requests if self.requests else 0.0


# --- a minimal HTTP/1.1 client: one connection, one request at a time, every answer checked for framing ---

class ConnectionLost(Exception):
    """The server closed or reset the connection before the whole answer came."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


class _Http(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[Response] | None = None
        self.closed = False
        self.answered_at = 0.0  # perf_counter() when the last answer was complete

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not registered subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            kind = "reset" if isinstance(exc, ConnectionResetError) else "closed"
            self._waiter.set_exception(ConnectionLost(kind))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._waiter is None or self._waiter.done():
            return
        try:
            response = _parse(self._buffer)
        except ValueError as exc:
            self._waiter.set_exception(exc)
            return
        if response is not None:
            self.answered_at = time.perf_counter()
            self._waiter.set_result(response)

    def send(self, request: bytes) -> asyncio.Future[Response]:
        """Write `request`; the future resolves with its answer (or ConnectionLost, ValueError)."""
        self._buffer.clear()
        self._waiter = asyncio.get_running_loop().create_future()
        if self.closed:
            self._waiter.set_exception(ConnectionLost("closed"))
        else:
            assert self.transport is not None
            self.transport.write(request)
        return self._waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _parse(buffer: bytearray) -> Response | None:
    """The response in `buffer` once complete, else None; ValueError when it is not HTTP/1.1."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end]).split(b"\r\n")
    status_line = head[0].split(b" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1.") or not status_line[1].isdigit():
        raise ValueError("protocol")
    headers: dict[bytes, bytes] = {}
    for line in head[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise ValueError("protocol")
        headers[name.strip().lower()] = value.strip()
    start = end + 4
    if b"content-length" in headers:
        length = int(headers[b"content-length"])
        if len(buffer) < start + length:
            return None
        if len(buffer) > start + length:
            raise ValueError("protocol")  # more than one answer to one request
        return Response(int(status_line[1]), headers, bytes(buffer[start:start + length]))
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = bytearray()
        at = start
        while True:
            line_end = buffer.find(b"\r\n", at)
            if line_end < 0:
                return None
            size = int(bytes(buffer[at:line_end]).split(b";")[0], 16)
            if size == 0:
                return Response(int(status_line[1]), headers, bytes(body)) if buffer.endswith(b"\r\n\r\n") else None
            if len(buffer) < line_end + 2 + size + 2:
                return None
            body += buffer[line_end + 2:line_end + 2 + size]
            at = line_end + 2 + size + 2
    raise ValueError("protocol")  # no framing: this client only speaks keep-alive


# --- one simulated user -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Outcome:
    seconds: float
    status: int | None = None
    error: str | None = None  # a kind: connect, closed, reset, timeout, protocol, check:<op>, 503-without-retry-after
    retry_after: str | None = None


class _TaskBody(msgspec.Struct):
    id: str
    user_id: str


class _ListBody(msgspec.Struct):
    tasks: list[_TaskBody]


class _ErrorBody(msgspec.Struct):
    error: str
    message: str


_decode_task = msgspec.json.Decoder(_TaskBody).decode
_decode_list = msgspec.json.Decoder(_ListBody).decode
_decode_error = msgspec.json.Decoder(_ErrorBody).decode


class User:
    """One user: its id, token, some of its task ids, and its connection."""

    __slots__ = ("auth", "conn", "id", "task_ids")

    def __init__(self, user_id: str, token: str, task_ids: list[str]) -> None:
        self.id = user_id
        self.auth = f"Authorization: Bearer {token}\r\n".encode()
        self.task_ids = task_ids
        self.conn: _Http | None = None

    def request(self, op: str, host: bytes) -> bytes:
        common = b"Host: " + host + b"\r\n" + self.auth
        if op == "list":
            return b"GET /api/tasks HTTP/1.1\r\n" + common + b"\r\n"
        if op == "create":
            body = b'{"title": "made by users10k"}'
            return (b"POST /api/tasks HTTP/1.1\r\n" + common + b"Content-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(body) + body)
        task = random.choice(self.task_ids).encode()
        if op == "toggle":
            return b"PATCH /api/tasks/" + task + b"/toggle HTTP/1.1\r\n" + common + b"Content-Length: 0\r\n\r\n"
        return b"GET /api/tasks/" + task + b" HTTP/1.1\r\n" + common + b"\r\n"

    def check(self, op: str, response: Response) -> Outcome | None:
        """None when `response` is what `op` should get; else the failed Outcome (seconds filled in later)."""
        status = response.status
        try:
            if status == 503:
                body = _decode_error(response.body)
                retry_after = response.headers.get(b"retry-after", b"").decode()
                if body.error != "service_unavailable" or not retry_after.isdigit() or int(retry_after) < 1:
                    return Outcome(0, error="503-without-retry-after")
                return None
            if status >= 300:
                _decode_error(response.body)
                return None
            if op == "list":
                if status != 200 or any(t.user_id != self.id for t in _decode_list(response.body).tasks):
                    return Outcome(0, error="check:list")
            else:
                task = _decode_task(response.body)
                if status != (201 if op == "create" else 200) or task.user_id != self.id:
                    return Outcome(0, error=f"check:{op}")
                if op == "create":
                    self.task_ids.append(task.id)
        except msgspec.DecodeError:
            return Outcome(0, error=f"check:{op}")
        return None


async def _ask(user: User, op: str, host: bytes, timeout_s: float, started: float | None = None) -> Outcome:
    """Send `op` on the user's connection; the answer's Outcome, timed from `started` (default: now)."""
    # perf_counter, not loop.time(): uvloop's clock has millisecond steps.
    clock = time.perf_counter
    begin = clock() if started is None else started
    conn = user.conn
    if conn is None or conn.closed:
        return Outcome(clock() - begin, error="closed")
    try:
        async with asyncio.timeout(timeout_s):
            response = await conn.send(user.request(op, host))
    except TimeoutError:
        conn.close()
        return Outcome(clock() - begin, error="timeout")
    except ConnectionLost as exc:
        return Outcome(clock() - begin, error=str(exc))
    except ValueError:
        conn.close()
        return Outcome(clock() - begin, error="protocol")
    seconds = clock() - begin
    failed = user.check(op, response)
    if failed is not None:
        return Outcome(seconds, status=response.status, error=failed.error)
    retry_after = response.headers.get(b"retry-after")
    return Outcome(seconds, status=response.status, retry_after=retry_after.decode() if retry_after else None)


def _pick(rng: random.Random) -> str:
    roll = rng.uniform(0, 100)
    for op, weight in MIX:
        if roll < weight:
            return op
        roll -= weight
    return MIX[0][0]


# --- the two scenarios ------------------------------------------------------------------------------------

async def connect_all(users: Sequence[User], host: str, port: int) -> Counter[str]:
    """Open one connection per user (those without an open one); the connect errors by kind."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    errors: Counter[str] = Counter()

    async def one(user: User) -> None:
        async with gate:
            try:
                _, protocol = await asyncio.wait_for(loop.create_connection(_Http, host, port), timeout=30)
            except (OSError, TimeoutError) as exc:
                errors[f"connect:{type(exc).__name__}"] += 1
                return
            user.conn = protocol

    await asyncio.gather(*(one(u) for u in users if u.conn is None or u.conn.closed))
    return errors


async def run_users(users: Sequence[User], host: str, port: int, *, seconds: float, think_s: float,
                    server_pid: int | None, timeout_s: float = 15.0) -> UsersResult:
    """The users scenario (module docstring): connect everyone, then `seconds` of requests with think time."""
    connect_errors = await connect_all(users, host, port)
    connected = sum(1 for u in users if u.conn is not None and not u.conn.closed)
    tally = Tally()
    by_op: Counter[str] = Counter()
    host_header = f"{host}:{port}".encode()
    loop = asyncio.get_running_loop()
    async with _sampling(server_pid) as memory:
        started = loop.time()
        deadline = started + seconds

        async def live(user: User, seed: int) -> None:
            rng = random.Random(seed)
            await asyncio.sleep(rng.uniform(0, think_s))  # users do not start together
            while loop.time() < deadline:
                op = _pick(rng)
                by_op[op] += 1
                tally.record(op, await _ask(user, op, host_header, timeout_s))
                await asyncio.sleep(think_s * rng.uniform(0.5, 1.5))

        await asyncio.gather(*(live(u, i) for i, u in enumerate(users) if u.conn is not None))
        elapsed = loop.time() - started
    latencies = sorted(tally.latencies_ms)
    return UsersResult(
        users=len(users), seconds=round(elapsed, 1), think_s=think_s, connected=connected,
        connect_errors=sum(connect_errors.values()), rps=round(tally.requests / elapsed, 1),
        p50_ms=_percentile(latencies, 50), p99_ms=_percentile(latencies, 99),
        max_ms=round(latencies[-1], 1) if latencies else 0.0, requests=tally.requests, ok=tally.ok,
        errors=dict(tally.errors + connect_errors), non_2xx={str(k): v for k, v in sorted(tally.non_2xx.items())},
        by_op=dict(by_op), memory=memory)


async def run_burst(users: Sequence[User], host: str, port: int, *, server_pid: int | None,
                    timeout_s: float = 30.0) -> BurstResult:
    """The burst scenario (module docstring): one request on every user's connection, all written at once.

    The requests are built first and written in one tight loop, and each answer is timed when its last
    byte arrives (not when a task gets round to it), so the client's own CPU, on a machine it shares
    with the server, stretches the burst as little as it can. Latency counts from the burst's start.
    """
    connect_errors = await connect_all(users, host, port)
    rng = random.Random(11)
    host_header = f"{host}:{port}".encode()
    ops = [_pick(rng) for _ in users]
    requests = [user.request(op, host_header) for user, op in zip(users, ops, strict=True)]
    tally = Tally()
    async with _sampling(server_pid) as memory:
        started = time.perf_counter()
        futures: list[asyncio.Future[Response] | None] = []
        for user, request in zip(users, requests, strict=True):
            conn = user.conn
            futures.append(None if conn is None or conn.closed else conn.send(request))
        write_ms = (time.perf_counter() - started) * 1000
        live = [f for f in futures if f is not None]
        if live:
            await asyncio.wait(live, timeout=timeout_s)
    within = 0
    ok_within = 0
    for user, op, future in zip(users, ops, futures, strict=True):
        outcome = _burst_outcome(user, op, future, started)
        tally.record("burst", outcome)
        if outcome.error is None and outcome.seconds <= BUDGET_S:
            within += 1
            ok_within += 1 if outcome.status is not None and outcome.status < 300 else 0
    latencies = sorted(tally.latencies_ms)
    return BurstResult(
        requests=len(users), answered_within_budget=within, ok=tally.ok, ok_within_budget=ok_within,
        shed_with_retry_after=tally.shed_with_retry_after, retry_after_values=dict(tally.retry_after_values),
        p50_ms=_percentile(latencies, 50), p99_ms=_percentile(latencies, 99),
        max_ms=round(latencies[-1], 1) if latencies else 0.0, ok_p99_ms=_percentile(sorted(tally.ok_latencies_ms), 99),
        shed_p50_ms=_percentile(sorted(tally.shed_latencies_ms), 50),
        shed_p99_ms=_percentile(sorted(tally.shed_latencies_ms), 99),
        errors=dict(tally.errors + connect_errors), non_2xx={str(k): v for k, v in sorted(tally.non_2xx.items())},
        write_ms=round(write_ms, 1), memory=memory)


def _burst_outcome(user: User, op: str, future: asyncio.Future[Response] | None, started: float) -> Outcome:
    conn = user.conn
    if future is None or conn is None:
        return Outcome(0.0, error="closed")
    if not future.done():
        future.cancel()
        conn.close()
        return Outcome(time.perf_counter() - started, error="timeout")
    error = future.exception()
    if isinstance(error, ConnectionLost):
        return Outcome(time.perf_counter() - started, error=str(error))
    if error is not None:
        conn.close()
        return Outcome(time.perf_counter() - started, error="protocol")
    response = future.result()
    seconds = conn.answered_at - started
    failed = user.check(op, response)
    if failed is not None:
        return Outcome(seconds, status=response.status, error=failed.error)
    retry_after = response.headers.get(b"retry-after")
    return Outcome(seconds, status=response.status, retry_after=retry_after.decode() if retry_after else None)


def _percentile(ordered: list[float], percent: float) -> float:
    if not ordered:
        return 0.0
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * percent / 100))], 2)


# --- the server's memory ----------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def _sampling(server_pid: int | None) -> AsyncIterator[Memory]:
    """Sample the server's memory every second while the block runs; yields the `Memory` it fills in."""
    memory = Memory()
    if server_pid is None:
        yield memory
        return
    for name, (rss, _) in _process_memory(server_pid).items():
        memory.rss_before_mib[name] = rss
    memory.total_pss_before_mib = round(_total_pss(server_pid), 1)
    stop = asyncio.Event()

    async def sample() -> None:
        while True:
            memory.peak_total_pss_mib = max(memory.peak_total_pss_mib, round(_total_pss(server_pid), 1))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            if stop.is_set():
                return

    sampler = asyncio.create_task(sample())
    try:
        yield memory
    finally:
        stop.set()
        await sampler
        memory.peak_total_pss_mib = max(memory.peak_total_pss_mib, round(_total_pss(server_pid), 1))
        for name, (_, hwm) in _process_memory(server_pid).items():
            memory.peak_rss_mib[name] = hwm


def server_processes(pid: int) -> dict[str, int]:
    """`main` and `worker-N` (by pid order) of the server whose main process is `pid`."""
    children = sorted(child_pids(pid))
    return {"main": pid, **{f"worker-{i + 1}": child for i, child in enumerate(children)}}


def _process_memory(pid: int) -> dict[str, tuple[float, float]]:
    """(VmRSS, VmHWM) in MiB of each server process."""
    found = {}
    for name, proc in server_processes(pid).items():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            status = Path(f"/proc/{proc}/status").read_text()
            rss = re.search(r"VmRSS:\s+(\d+) kB", status)
            hwm = re.search(r"VmHWM:\s+(\d+) kB", status)
            if rss and hwm:
                found[name] = (round(int(rss[1]) / 1024, 1), round(int(hwm[1]) / 1024, 1))
    return found


def _total_pss(pid: int) -> float:
    """The summed PSS (MiB) of the server's processes: what the instance costs the machine, shared pages split."""
    total = 0
    for proc in server_processes(pid).values():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            match = re.search(r"^Pss:\s+(\d+) kB", Path(f"/proc/{proc}/smaps_rollup").read_text(), re.MULTILINE)
            if match:
                total += int(match[1])
    return total / 1024


# --- standalone: database, seed, server -------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    raise_file_limit()
    with contextlib.ExitStack() as stack:
        if args.url:
            if not args.secret:
                print("users10k: --url needs --secret (the server's JWT_SECRET)", file=sys.stderr)
                return 2
            match = re.fullmatch(r"http://([^:/]+):(\d+)/?", args.url)
            if not match:
                print("users10k: --url must be http://host:port", file=sys.stderr)
                return 2
            host, port, secret, pid = match[1], int(match[2]), args.secret, args.server_pid
            admin = os.environ.get("DATABASE_ADMIN_URL", "").strip()
            if not admin:
                print("users10k: --url needs DATABASE_ADMIN_URL (to read the seeded task ids)", file=sys.stderr)
                return 2
        else:
            admin, app = stack.enter_context(_database(args))
            _log(f"seeding {args.users:,} users x {args.tasks_per_user} tasks")
            _seed(admin, args.users, args.tasks_per_user)
            secret = secrets.token_urlsafe(32)
            server = stack.enter_context(_server(app, secret, args))
            host, port, pid = "127.0.0.1", server.port, server.process.pid
        users = _users(admin, secret, args.users)
        report: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                  "load_before": os.getloadavg(), "options": vars(args)}
        uvloop.run(_run(users, host, port, pid, args, report))
        report["load_after"] = os.getloadavg()
    print(_markdown(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    failed = [t for t in report.get("targets", []) if not t["met"]]
    return 1 if failed else 0


async def _run(users: list[User], host: str, port: int, pid: int | None, args: argparse.Namespace,
               report: dict[str, Any]) -> None:
    _log(f"opening {len(users):,} connections")
    if "users" in args.scenarios:
        _log(f"{len(users):,} users, one request every ~{args.think:g} s each, for {args.seconds:g} s")
        result = await run_users(users, host, port, seconds=args.seconds, think_s=args.think, server_pid=pid)
        report["users"] = asdict(result)
        _log(f"users: {result.rps:.0f} req/s, p99 {result.p99_ms} ms, errors {result.errors}, "
             f"non-2xx {result.non_2xx}, peak RSS {result.memory.peak_rss_mib}")
    if "burst" in args.scenarios:
        _log(f"burst: {len(users):,} requests at once")
        burst = await run_burst(users, host, port, server_pid=pid)
        report["burst"] = {**asdict(burst), "share_within_budget": round(burst.share_within_budget, 4)}
        _log(f"burst: {burst.share_within_budget:.1%} answered within {BUDGET_S:g} s, ok {burst.ok}, "
             f"503 {burst.shed_with_retry_after}, errors {burst.errors}")
    for user in users:
        if user.conn is not None:
            user.conn.close()
    report["targets"] = _targets(report)


def _targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    targets = []
    if "users" in report:
        u = report["users"]
        peak = max(u["memory"]["peak_rss_mib"].values(), default=0.0)
        targets.append({"target": f"{u['users']:,} users: 0 errors, 0 non-2xx", "met":
                        not u["errors"] and not u["non_2xx"], "measured": f"{u['errors']} {u['non_2xx']}"})
        targets.append({"target": "users: p99 <= 100 ms", "met": u["p99_ms"] <= 100, "measured": f"{u['p99_ms']} ms"})
        targets.append({"target": "users: every process <= 100 MB RSS", "met": 0 < peak <= 100,
                        "measured": f"{peak} MiB"})
    if "burst" in report:
        b = report["burst"]
        targets.append({"target": f"burst: >= 95 % answered within {BUDGET_S:g} s",
                        "met": b["share_within_budget"] >= 0.95, "measured": f"{b['share_within_budget']:.1%}"})
        rest_ok = all(k == "503" for k in b["non_2xx"]) and b["shed_with_retry_after"] == b["non_2xx"].get("503", 0)
        targets.append({"target": "burst: the rest 503 + Retry-After, 0 errors", "met": rest_ok and not b["errors"],
                        "measured": f"non-2xx {b['non_2xx']}, errors {b['errors']}"})
    return targets


def _markdown(report: dict[str, Any]) -> str:
    lines = [f"## users10k, {report['started']} (load average before {_load(report['load_before'])}, "
             f"after {_load(report.get('load_after'))})", ""]
    if "users" in report:
        u = report["users"]
        lines += ["| scenario | requests/s | p50 ms | p99 ms | max ms | requests | errors | non-2xx |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
                  f"| {u['users']:,} users, think {u['think_s']:g} s, {u['seconds']:g} s | {u['rps']:,.0f} "
                  f"| {u['p50_ms']} | {u['p99_ms']} | {u['max_ms']} | {u['requests']:,} | {u['errors'] or 0} "
                  f"| {u['non_2xx'] or 0} |", ""]
        lines += _memory_lines("users", u["memory"])
    if "burst" in report:
        b = report["burst"]
        lines += ["| burst | answered within 2 s | 2xx (within 2 s) | 503 + Retry-After | p50 ms | p99 ms "
                  "| max ms | errors | other non-2xx |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
                  f"| {b['requests']:,} at once | {b['share_within_budget']:.1%} "
                  f"| {b['ok']:,} ({b['ok_within_budget']:,}) "
                  f"| {b['shed_with_retry_after']:,} {b['retry_after_values']} | {b['p50_ms']} | {b['p99_ms']} "
                  f"| {b['max_ms']} | {b['errors'] or 0} "
                  f"| { {k: v for k, v in b['non_2xx'].items() if k != '503'} or 0} |", "",
                  f"burst: 2xx p99 {b['ok_p99_ms']} ms; 503 p50 {b['shed_p50_ms']} ms, p99 {b['shed_p99_ms']} ms; "
                  f"the client wrote the {b['requests']:,} requests in {b['write_ms']} ms", ""]
        lines += _memory_lines("burst", b["memory"])
    lines += ["| target | measured | met |", "| --- | --- | :---: |"]
    lines += [f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |" for t in report["targets"]]
    return "\n".join(lines)


def _memory_lines(name: str, memory: dict[str, Any]) -> list[str]:
    procs = ", ".join(f"{p} {v} (before {memory['rss_before_mib'].get(p, '?')})"
                      for p, v in memory["peak_rss_mib"].items())
    return [f"{name}: peak RSS MiB per process: {procs}; total PSS peak {memory['peak_total_pss_mib']} MiB "
            f"(before {memory['total_pss_before_mib']})", ""]


def _load(value: Any) -> str:
    return "?" if not value else "/".join(f"{v:.2f}" for v in value)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.users10k", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--tasks-per-user", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--think", type=float, default=10.0, help="seconds between a user's requests (mean)")
    parser.add_argument("--scenarios", default="users,burst", help="users, burst or both (comma-separated)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pool-size", type=int, default=4)
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for the server it starts (repeatable)")
    parser.add_argument("--url", help="drive this running server instead of starting one (http://host:port)")
    parser.add_argument("--secret", help="with --url: the server's JWT_SECRET")
    parser.add_argument("--server-pid", type=int, help="with --url: the server's main pid, for its memory")
    parser.add_argument("--keep", action="store_true", help="keep the database and print its DSNs")
    parser.add_argument("--json", help="write the report as JSON here")
    args = parser.parse_args(argv)
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    if set(args.scenarios) - {"users", "burst"}:
        parser.error("--scenarios takes users and/or burst")
    return args


def raise_file_limit() -> None:
    """Raise this process's open-file limit to its hard limit: 10,000 sockets need more than 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@contextlib.contextmanager
def _database(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    """(admin DSN, app DSN) of a fresh migrated database on DATABASE_ADMIN_URL's server or an embedded one."""
    from api import embedded
    from api.migrate import migrate

    with contextlib.ExitStack() as stack:
        cluster = os.environ.get("DATABASE_ADMIN_URL", "").strip()
        if not cluster:
            data = ROOT / ".taskapi" / "bench-pg"
            _log(f"starting the embedded PostgreSQL in {data}")
            server = embedded.start(data)
            stack.callback(server.stop)
            cluster = server.dsn()
        name = f"taskapi_users10k_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(cluster, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        parts = {**conninfo_to_dict(cluster), "dbname": name}
        admin = make_conninfo("", **parts)
        password = secrets.token_urlsafe(12)
        migrate(admin, app_password=password)
        app = make_conninfo("", **{**parts, "user": "taskapi_app", "password": password})
        try:
            yield admin, app
        finally:
            if args.keep:
                _log(f"kept: DATABASE_ADMIN_URL={admin!r} DATABASE_URL={app!r}")
            else:
                with psycopg.connect(cluster, autocommit=True) as conn:
                    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _seed(admin: str, users: int, per_user: int) -> None:
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(SEED_TASKS, {"prefix": USER_PREFIX, "users": users, "per_user": per_user})
        conn.execute("VACUUM (ANALYZE) taskapi.tasks")


def _users(admin: str, secret: str, count: int) -> list[User]:
    from api.auth import mint_token

    with psycopg.connect(admin) as conn:
        rows = conn.execute(SAMPLE_TASK_IDS, {"per_user": 20, "pattern": f"{USER_PREFIX}%"}).fetchall()
    ids: dict[str, list[str]] = {user: list(tasks) for user, tasks in rows}
    users = []
    for n in range(1, count + 1):
        user_id = f"{USER_PREFIX}{n}"
        if not ids.get(user_id):
            raise SystemExit(f"users10k: user {user_id} has no tasks: seed with the same --users first")
        users.append(User(user_id, mint_token(secret, user_id, ttl_s=6 * 3600), ids[user_id]))
    return users


class _server:
    """`taskapi serve` as a separate process, as the bench runs it."""

    def __init__(self, app_dsn: str, secret: str, args: argparse.Namespace) -> None:
        self.port = _free_port()
        extra = dict(item.split("=", 1) for item in args.server_env)
        self.env = {**os.environ, "DATABASE_URL": app_dsn, "JWT_SECRET": secret, "PORT": str(self.port),
                    "HOST": "127.0.0.1", "WORKERS": str(args.workers), "DB_POOL_SIZE": str(args.pool_size),
                    "LOG_LEVEL": "WARNING", **extra}
        self.workers = args.workers
        self.log = tempfile.NamedTemporaryFile(prefix="taskapi-users10k-", suffix=".log", delete=False)

    def __enter__(self) -> _server:
        self.process = subprocess.Popen([sys.executable, "-m", "api.cli", "serve"], env=self.env, cwd=ROOT,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"users10k: taskapi serve exited:\n{Path(self.log.name).read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200") and len(child_pids(self.process.pid)) >= self.workers:
                    break
            time.sleep(0.1)  # waiting for the server to listen
        else:
            raise SystemExit("users10k: taskapi serve did not become ready")
        _log(f"server log: {self.log.name}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _log(message: str) -> None:
    print(f"users10k: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
