"""Admission: how many requests may wait for a database connection, sized from the rate the pool serves them.

Little's law: a queue of `L` requests that the pool serves at `X` per second drains in `L / X` seconds.
A request that arrives behind `L` waiters is admitted only when `L < X * (budget - its own service
time) * BUDGET_SHARE`, i.e. when it can still be served, with a margin, within its budget
(DB_TIMEOUT_S from its arrival, the seed's 2 s); otherwise it is answered 503 at once, before
anything is spent on it, which is what keeps a burst of 10,000 from making everyone wait. `X` is
measured, never configured: each connection serves one request per `S` seconds, `S` being the
recent mean time a request holds a connection, and a connection held longer than `S` (a slow or
blocked statement) counts for only what it has shown.
So the bound grows with a fast database and shrinks to the floor with a stuck one, instead of a
fixed queue length that is too short on a good day and too long on a bad one (issue #11).

The budget is counted from the request's arrival, which the application does not see: granian hands
it over when the event loop gets to it. How late the loop runs is measured (a timer that should fire
every LAG_PROBE_S) and subtracted, so when the worker is behind (a burst, or other processes taking
the CPU) fewer wait, and each waits only until its budget is spent.

The shed 503's Retry-After is drawn at random over the seconds the pool needs to serve what was
shed in the last second, so a burst's retries come back spread out, not as a second burst.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import random
import time
from collections.abc import Callable

import msgspec

from .asgi import ASGIApp, Receive, Scope, Send
from .errors import ErrorBody

# How fast the service-time average follows new samples: about 20 requests to adapt, i.e. tens of
# milliseconds under a burst; slow enough that one odd request does not swing the bound.
SERVICE_TIME_WEIGHT = 0.1
# The bound on waiters never goes below this many per connection (the measured rate collapses while
# the database is blocked: waiting is then futile), nor above CEILING_PER_CONNECTION per connection:
# a waiting request holds its head and body (up to 192 KiB) in the worker's memory.
FLOOR_PER_CONNECTION = 1
CEILING_PER_CONNECTION = 512
# Before the first measurement (a fresh worker) the fixed queue length of before issue #11: a worker
# that has served nothing yet must not refuse its first concurrent clients.
UNMEASURED_PER_CONNECTION = 32
UNMEASURED_MIN = 64
# The queue is sized to drain in this share of the budget left. The rate is measured on the pool's
# connections, but under a burst the CPU is also spent on the requests refused and on the database
# (on the same machine, in the setting), so the pool runs slower than it has shown: measured,
# 10,000 requests at once with the whole budget admitted had only 29 % of the served ones answered
# within 2 s on a busy machine.
BUDGET_SHARE = 0.5
# The event loop's lag is sampled this often, and averaged with this weight (a few samples: a burst's
# backlog shows within a few hundred milliseconds, one slow callback does not).
LAG_PROBE_S = 0.05
LAG_WEIGHT = 0.3
# Retry-After of a shed request: at least 1 s, spread over at least this many seconds, at most over
# MAX_RETRY_SPREAD_S (a client told to wait longer would rather give up).
MIN_RETRY_SPREAD_S = 2
MAX_RETRY_SPREAD_S = 30

# The route the access log and the metrics give a request refused by admission.
SHED_ROUTE = "(shed)"
# When the current request must have its connection by (time.monotonic()); set by `AdmissionGate`
# for the requests it admits, read by api/db.py. Unset (None) for requests the gate does not see.
request_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("taskapi_request_deadline",
                                                                               default=None)


class Admission:
    """The admission bound of one worker's pool; every method takes the current monotonic time.

    `enter` admits or refuses a request, `leave` ends it; `holding`/`released` bracket the time an
    admitted request holds a connection, which is what the service time is measured from.
    """

    def __init__(self, pool_size: int, budget_s: float, *, fixed_limit: int | None = None,
                 rng: Callable[[int, int], int] = random.randint) -> None:
        self.pool_size = pool_size
        self.budget_s = budget_s
        self.fixed_limit = fixed_limit
        self.floor = FLOOR_PER_CONNECTION * pool_size
        self.ceiling = CEILING_PER_CONNECTION * pool_size
        self.unmeasured = min(self.ceiling, max(UNMEASURED_MIN, UNMEASURED_PER_CONNECTION * pool_size))
        self.service_s: float | None = None  # mean seconds a request holds a connection; None: not measured yet
        self.lag_s = 0.0  # how late the event loop runs what is ready: time a request waited before it is seen
        self.admitted = 0  # requests admitted and not finished
        self.shed_total = 0
        self._holds: list[float] = []  # when each connection now held was taken
        self._rng = rng
        self._shed_second = 0
        self._shed_this_second = 0
        self._shed_last_second = 0

    def rate(self, now: float) -> float | None:
        """Requests per second the pool serves, by what it has shown; None before any measurement."""
        if self.service_s is None:
            return None
        service = self.service_s
        # A connection held longer than the mean serves at most one request per its age so far.
        held = sum(1 / max(service, now - taken) for taken in self._holds)
        return (self.pool_size - len(self._holds)) / service + held

    def limit(self, now: float) -> int:
        """How many admitted requests may wait for a connection now (those holding one not counted)."""
        if self.fixed_limit is not None:
            return self.fixed_limit
        rate = self.rate(now)
        if rate is None:
            return self.unmeasured
        assert self.service_s is not None
        allowed = rate * BUDGET_SHARE * max(0.0, self.budget_s - self.lag_s - self.service_s)
        return max(self.floor, min(self.ceiling, math.floor(allowed)))

    @property
    def waiting(self) -> int:
        """Admitted requests not holding a connection (in the queue, or on their way to it)."""
        return self.admitted - len(self._holds)

    def enter(self, now: float) -> bool:
        """Admit a request (True, and count it until `leave`) or refuse it (False, counted as shed)."""
        if self.fixed_limit is None and self.waiting >= self.limit(now):
            self._count_shed(now)
            return False
        self.admitted += 1
        return True

    def leave(self) -> None:
        self.admitted -= 1

    def holding(self, now: float) -> float:
        """An admitted request took a connection at `now`; returns the token to give `released`."""
        self._holds.append(now)
        return now

    def released(self, taken: float, now: float) -> None:
        """The connection taken at `taken` is back: one more measurement of the service time."""
        self._holds.remove(taken)
        sample = now - taken
        self.service_s = sample if self.service_s is None else (
            self.service_s + SERVICE_TIME_WEIGHT * (sample - self.service_s))

    def deadline(self, now: float) -> float:
        """When a request admitted at `now` must have its connection: its budget, counted from its arrival."""
        return now + self.budget_s - self.lag_s

    def record_lag(self, sample_s: float) -> None:
        """One measurement of how late the event loop ran a callback that was due."""
        self.lag_s += LAG_WEIGHT * (sample_s - self.lag_s)

    async def watch_loop(self) -> None:
        """Measure the event loop's lag every LAG_PROBE_S until cancelled (a task of the worker's lifespan)."""
        while True:
            due = time.monotonic() + LAG_PROBE_S
            await asyncio.sleep(LAG_PROBE_S)
            self.record_lag(max(0.0, time.monotonic() - due))

    def retry_after(self, now: float) -> int:
        """Seconds a shed request is told to wait: uniform over the time the pool needs for what was shed."""
        rate = self.rate(now)
        self._roll(now)
        shed = self._shed_this_second + self._shed_last_second
        spread = MIN_RETRY_SPREAD_S if not rate else math.ceil(shed / rate)
        return self._rng(1, max(MIN_RETRY_SPREAD_S, min(MAX_RETRY_SPREAD_S, spread)))

    def _count_shed(self, now: float) -> None:
        self.shed_total += 1
        self._roll(now)
        self._shed_this_second += 1

    def _roll(self, now: float) -> None:
        second = int(now)
        if second != self._shed_second:
            self._shed_last_second = self._shed_this_second if second == self._shed_second + 1 else 0
            self._shed_this_second = 0
            self._shed_second = second


class AdmissionGate:
    """ASGI middleware: every /api request is admitted by `Admission` or answered 503 at once.

    It runs before the request is parsed, authenticated or routed: refusing costs a few microseconds,
    so a burst of thousands is answered before the admitted requests' budgets run out. CORS
    preflights (OPTIONS) and /health, /ready pass untouched: they never wait for the pool.
    """

    def __init__(self, app: ASGIApp, admission: Admission,
                 on_shed: Callable[[], None] | None = None) -> None:
        self.app = app
        self.admission = admission
        self.on_shed = on_shed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or not _is_api(scope["path"]):
            await self.app(scope, receive, send)
            return
        now = time.monotonic()
        admission = self.admission
        if not admission.enter(now):
            # It never reaches routing; the access log and the metrics name its route thus.
            scope["path_template"] = SHED_ROUTE
            if self.on_shed is not None:
                self.on_shed()
            await _shed(send, admission.retry_after(now))
            return
        token = request_deadline.set(admission.deadline(now))
        try:
            await self.app(scope, receive, send)
        finally:
            request_deadline.reset(token)
            admission.leave()


def _is_api(path: str) -> bool:
    return path.startswith("/api/") or path == "/api"


_SHED_BODY = msgspec.json.encode(ErrorBody("service_unavailable",
                                           "the server is at capacity; retry after the Retry-After seconds"))


async def _shed(send: Send, retry_after: int) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(_SHED_BODY)),
               (b"retry-after", b"%d" % retry_after)]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": _SHED_BODY})
