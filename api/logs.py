"""The outermost ASGI layer: a request id on every response, and one JSON log line per request.

It wraps the whole Litestar app, so 404s and 405s from routing carry an X-Request-ID too. The log
line holds the route template (never the raw path, which may carry ids), and a hash of the user id
(never the id, the token or a body).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import msgspec

from .asgi import ASGIApp, Message, Receive, Scope, Send
from .auth import caller_of

log = logging.getLogger("taskapi.access")

# The route of a request no route matched (404, 405): the raw path, which may hold ids, is never logged.
UNMATCHED = "(unmatched)"
_SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")
_encode = msgspec.json.Encoder().encode


# Told of every answered request: method, route template, status, seconds (api/metrics.py).
Observer = Callable[[str, str, int, float], None]


class RequestLog:
    """ASGI middleware around the app; `app` is the wrapped application, `observe` an optional `Observer`."""

    def __init__(self, app: ASGIApp, *, observe: Observer | None = None) -> None:
        self.app = app
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _request_id(scope)
        scope["taskapi.request_id"] = request_id
        header = (b"x-request-id", request_id.encode())
        status = 500
        logged = False
        observe = self.observe

        async def send_with_id(message: Message) -> None:
            nonlocal status, logged
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            elif message["type"] == "http.response.body" and not message.get("more_body") and not logged:
                # Logged before the last byte leaves, so whoever received the response can find its line.
                logged = True
                _log_request(scope, request_id, status, started, observe)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if not logged:
                _log_request(scope, request_id, status, started, observe)


def _log_request(scope: Scope, request_id: str, status: int, started: float, observe: Observer | None) -> None:
    seconds = time.perf_counter() - started
    if observe is not None:
        observe(scope["method"], scope.get("path_template") or UNMATCHED, status, seconds)
    if log.isEnabledFor(logging.INFO):
        _write_line(scope, request_id, status, seconds)


def _request_id(scope: Scope) -> str:
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for name, value in headers:
        if name == b"x-request-id":
            if _SANE_REQUEST_ID.fullmatch(value):
                return value.decode()
            break
    # Unique, not secret: a random prefix per process and a counter (uuid4 costs a getrandom call).
    return f"{_ID_PREFIX}{next(_id_counter):08x}"


_ID_PREFIX = uuid.uuid4().hex[:16]
_id_counter = itertools.count(1)


def _new_id_prefix() -> None:
    # granian forks its workers from a process that imported this module: without a new prefix each
    # worker would hand out the same ids (its counter starts over too).
    global _ID_PREFIX, _id_counter
    _ID_PREFIX = uuid.uuid4().hex[:16]
    _id_counter = itertools.count(1)


os.register_at_fork(after_in_child=_new_id_prefix)


def _write_line(scope: Scope, request_id: str, status: int, seconds: float) -> None:
    caller = caller_of(scope)
    line = {
        "time": _utc_now(),
        "level": "info",
        "request_id": request_id,
        "method": scope["method"],
        "route": scope.get("path_template") or UNMATCHED,
        "status": status,
        "duration_ms": round(seconds * 1000, 3),
        "user": _user_hash(caller.id) if caller else None,
    }
    # One unbuffered write per line: lines of concurrent workers never interleave, and none waits in
    # a buffer when the process dies.
    os.write(_STDERR, _encode(line) + b"\n")


def _user_hash(user_id: str) -> str:
    # surrogatepass: a `sub` is any JSON string, and a lone surrogate must not cost the request its line.
    return hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]


_STDERR = 2
_last_second = -1
_last_stamp = ""


def _utc_now() -> str:
    """The current UTC time to the second, formatted once per second."""
    global _last_second, _last_stamp
    now = int(time.time())
    if now != _last_second:
        _last_second = now
        _last_stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    return _last_stamp


class JsonFormatter(logging.Formatter):
    """Log records as JSON lines, like the access log; tracebacks only in server-side logs."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + "Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return _encode(line).decode()


def configure_logging(level: str) -> None:
    """JSON lines on stderr at `level` for taskapi and the libraries it drives."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # psycopg_pool logs reconnection attempts at INFO/WARNING; keep them, but not every connection.
    logging.getLogger("psycopg.pool").setLevel(max(logging.getLevelName(level), logging.WARNING))
