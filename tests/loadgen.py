"""A small, bounded HTTP load for the fault tests: client threads that create tasks and record every outcome.

Each request creates a task with a title used once only, so afterwards the database says which
acknowledged writes exist and whether any was written twice. The load stops when told to, or by
itself after `max_seconds`.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass

import httpx

from conftest import User, make_user


@dataclass(frozen=True)
class Outcome:
    """One request: when it ran, and what came back (status None: no response, see `error`)."""

    title: str  # also the request's X-Request-ID, so the server's log can be searched for it
    started: float
    ended: float
    status: int | None
    error: str | None = None
    code: str | None = None
    retry_after: str | None = None

    @property
    def seconds(self) -> float:
        return self.ended - self.started


class CreateLoad:
    """`clients` threads, each with its own user and keep-alive connection, POSTing tasks back to back."""

    def __init__(self, base_url: str, *, clients: int = 6, timeout_s: float = 15, max_seconds: float = 90,
                 keep_alive: bool = True, path: str = "/api/tasks") -> None:
        self.base_url = base_url
        self.users: list[User] = [make_user("load") for _ in range(clients)]
        self.timeout_s = timeout_s
        self.max_seconds = max_seconds
        self.keep_alive = keep_alive
        self.path = path
        self.outcomes: list[Outcome] = []
        self._in_flight: set[str] = set()  # titles of the requests sent and not yet answered
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(user,), daemon=True) for user in self.users]

    def start(self) -> CreateLoad:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout_s + 5)
        assert not any(t.is_alive() for t in self._threads), "a load client is stuck"
        return self.snapshot()

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def in_flight(self) -> int:
        """How many clients are inside a request: sent (or sending) it, no outcome yet."""
        with self._lock:
            return len(self._in_flight)

    def count(self, status: int | None, *, since: float = 0.0) -> int:
        return sum(1 for o in self.snapshot() if o.status == status and o.started >= since)

    def first(self, status: int, *, ended_after: float) -> Outcome | None:
        matching = [o for o in self.snapshot() if o.status == status and o.ended > ended_after]
        return min(matching, key=lambda o: o.ended) if matching else None

    def _run(self, user: User) -> None:
        headers = {**user.headers} if self.keep_alive else {**user.headers, "Connection": "close"}
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(base_url=self.base_url, timeout=self.timeout_s) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                title = f"load-{uuid.uuid4().hex}"
                started = time.monotonic()
                with self._lock:
                    self._in_flight.add(title)
                try:
                    response = client.post(self.path, json={"title": title}, headers={**headers, "X-Request-ID": title})
                except httpx.HTTPError as exc:
                    outcome = Outcome(title, started, time.monotonic(), None, error=f"{type(exc).__name__}: {exc}")
                else:
                    code = None
                    if response.status_code >= 400 and response.headers.get("content-type") == "application/json":
                        code = response.json().get("error")
                    outcome = Outcome(title, started, time.monotonic(), response.status_code, code=code,
                                      retry_after=response.headers.get("retry-after"))
                with self._lock:
                    self.outcomes.append(outcome)
                    self._in_flight.discard(title)
                if outcome.status is None or outcome.status >= 500:
                    self._stop.wait(0.02)  # a client backing off a little after a failure, as real ones do
