"""Issue #6.3: hostile HTTP gets a 4xx JSON error or a closed connection, never a 5xx or a stalled worker.

Raw sockets, because httpx will not send a lying Content-Length, a body a byte a second or invalid
UTF-8 in a header. The server under test reads with HTTP_READ_TIMEOUT_S=HTTP_KEEPALIVE_S=2 to keep the slow
cases short.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest

from conftest import Server, User, make_user, server_env

READ_TIMEOUT_S = 2.0
# How late past READ_TIMEOUT_S a cut-off may come on a busy machine. Generous: the bound only tells
# "cut off by the read timeout" from "allowed to go on" (the slow clients below would take 30 s, and
# `exchange` waits 15 s at most).
SLACK_S = 6.0


@pytest.fixture(scope="module")
def hostile_server(database, tmp_path_factory) -> Iterator[Server]:
    timeouts = {"HTTP_READ_TIMEOUT_S": str(READ_TIMEOUT_S), "HTTP_KEEPALIVE_S": str(READ_TIMEOUT_S)}
    srv = Server(env=server_env(database, **timeouts),
                 log_path=tmp_path_factory.mktemp("hostile") / "serve.log").start()
    yield srv
    srv.stop()
    assert "taskapi.errors" not in srv.log(), "a hostile request caused a logged error (a 500)"
    assert '"status":5' not in srv.log()


@pytest.fixture(scope="module")
def mallory() -> User:
    return make_user("mallory")


@dataclass
class Reply:
    """What came back on one connection: the first response (if any) and whether the server closed it."""

    status: int | None
    headers: dict[str, str]
    body: bytes
    closed: bool
    seconds: float
    started: float = 0.0  # time.monotonic() when the connection was open and the reader started

    @property
    def ended(self) -> float:
        return self.started + self.seconds

    def json(self) -> dict[str, object]:
        assert self.headers.get("content-type") == "application/json", self
        return json.loads(self.body)


def exchange(port: int, *chunks: bytes, delay: float = 0.0, timeout: float = 15.0) -> Reply:
    """Send `chunks` (`delay` seconds apart) on one connection while reading whatever comes back."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    received = bytearray()
    done = threading.Event()

    def read() -> None:
        try:
            while data := sock.recv(65536):
                received.extend(data)
        except OSError:
            pass
        done.set()

    reader = threading.Thread(target=read, daemon=True)
    started = time.monotonic()
    reader.start()
    try:
        for i, chunk in enumerate(chunks):
            if i and delay and done.wait(delay):  # the wait is the client's slowness; stop once answered
                break
            try:
                sock.sendall(chunk)
            except OSError:  # the server closed the connection on us: read what it said
                break
        done.wait(timeout)
    finally:
        seconds = time.monotonic() - started
        closed = done.is_set()
        sock.close()
        reader.join(5)
    return _parse(bytes(received), closed, seconds, started)


def _parse(raw: bytes, closed: bool, seconds: float, started: float) -> Reply:
    if not raw:
        return Reply(None, {}, b"", closed, seconds, started)
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", len(rest)))
    return Reply(int(lines[0].split()[1]), headers, rest[:length], closed, seconds, started)


def request(method: str, path: str, user: User | None, *, body: bytes | None = None,
            headers: bytes = b"", content_length: int | None = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n".encode()
    if user is not None:
        head += f"Authorization: Bearer {user.token}\r\n".encode()
    if body is not None:
        head += b"Content-Type: application/json\r\n"
        head += b"Content-Length: %d\r\n" % (len(body) if content_length is None else content_length)
    return head + headers + b"\r\n" + (body or b"")


def assert_refused(reply: Reply, status: int | None = None, code: str | None = None) -> None:
    """A 4xx with the contract's JSON body (of this status and code, when given), or a closed connection."""
    if reply.status is None:
        assert reply.closed, reply
        return
    assert 400 <= reply.status < 500, reply
    if status is not None:
        assert reply.status == status, reply
    if code is not None:
        body = reply.json()
        assert body["error"] == code and body["message"], body


# --- headers ------------------------------------------------------------------------------------

def test_a_head_over_128_kib_is_a_json_431(hostile_server, mallory):
    big = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"a" * 7000) for i in range(20))  # hyper parses <= 100 headers
    reply = exchange(hostile_server.port, request("GET", "/api/tasks", mallory, headers=big))
    assert_refused(reply, 431, "headers_too_large")


@pytest.mark.parametrize("headers", [
    b"X-Huge: " + b"a" * 600_000 + b"\r\n",  # past granian's buffer: its own 431, connection closed
    b"".join(b"X-Many-%d: v\r\n" % i for i in range(300)),  # more headers than granian parses
], ids=["600-kib-header", "300-headers"])
def test_heads_past_the_servers_buffer_are_refused_or_closed(hostile_server, mallory, headers):
    assert_refused(exchange(hostile_server.port, request("GET", "/api/tasks", mallory, headers=headers)))


def test_a_100_kb_token_is_a_401(hostile_server):
    head = b"GET /api/tasks HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer " + b"e" * 100_000
    reply = exchange(hostile_server.port, head + b"\r\n\r\n")
    assert_refused(reply, 401, "unauthorized")
    assert "invalid_token" in reply.headers["www-authenticate"]


@pytest.mark.parametrize("headers", [
    b"X-Request-ID: \xff\xfe\r\n", b"Content-Type: application/json; charset=\xff\r\n", b"X-Nul: a\x00b\r\n",
], ids=["request-id", "content-type", "nul"])
def test_invalid_bytes_in_headers_are_never_a_5xx(hostile_server, mallory, headers):
    reply = exchange(hostile_server.port, request("GET", "/api/tasks", mallory, headers=headers))
    assert reply.status is None or reply.status < 500, reply


@pytest.mark.parametrize("path", [
    b"/api/tasks/\xff\xfe", b"/api/tasks/%ff%fe", b"/api/%00/tasks", b"/" + b"a" * 20_000,
], ids=["raw-bytes", "escaped-bytes", "nul", "20k-path"])
def test_invalid_paths_are_never_a_5xx(hostile_server, mallory, path):
    reply = exchange(hostile_server.port, b"GET " + path + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                     + f"Authorization: Bearer {mallory.token}\r\n\r\n".encode())
    assert reply.status is None or reply.status < 500, reply


# --- bodies -------------------------------------------------------------------------------------

def test_a_declared_body_over_64_kib_is_a_413_before_it_is_sent(hostile_server, mallory):
    reply = exchange(hostile_server.port, request("POST", "/api/tasks", mallory, body=b"", content_length=10**9))
    assert_refused(reply, 413, "payload_too_large")
    assert reply.seconds < READ_TIMEOUT_S, "answered without waiting for the body"


def test_a_chunked_body_over_64_kib_is_a_413(hostile_server, mallory):
    head = request("POST", "/api/tasks", mallory, headers=b"Content-Type: application/json\r\n"
                   b"Transfer-Encoding: chunked\r\n")
    chunk = b"4000\r\n" + b" " * 0x4000 + b"\r\n"
    reply = exchange(hostile_server.port, head, *[chunk] * 8, b"0\r\n\r\n")
    assert_refused(reply, 413, "payload_too_large")


def test_a_body_longer_than_its_content_length_is_never_a_5xx(hostile_server, mallory):
    """Content-Length says 20; the rest (100 KiB) is garbage where the next request should be."""
    body = b'{"title": "lying"}  ' + b"A" * 100_000
    reply = exchange(hostile_server.port, request("POST", "/api/tasks", mallory, body=body, content_length=20))
    assert reply.status in (201, 400), reply  # the 20 declared bytes are a valid task: 201 is honest


def test_a_body_shorter_than_its_content_length_is_a_408(hostile_server, mallory):
    reply = exchange(hostile_server.port, request("POST", "/api/tasks", mallory, body=b'{"ti', content_length=2000))
    assert_refused(reply, 408, "request_timeout")
    assert READ_TIMEOUT_S - 0.1 <= reply.seconds <= READ_TIMEOUT_S + SLACK_S


@pytest.mark.parametrize("body", [
    b"[" * 65_000,
    b'{"title": ' + b"[" * 30_000 + b"]" * 30_000 + b"}",
    b'{"title": ' + b'{"a": ' * 6_000 + b"1" + b"}" * 6_001,
    b'{"title": "' + "é".encode() * 30_000 + b'"}',
    b'{"title": [' + b"1," * 30_000 + b"1]}",
    b'{"title": "x", "completed": 1e999999}',
    b'{"title": "\xff\xfe invalid utf-8"}',
    b'{"title": "\\ud800 lone surrogate"}',
    b'{"title": "x"' + b', "k": 1' * 7_000 + b"}",
], ids=["deep-array", "deep-title", "deep-object", "60k-title", "huge-array", "huge-number", "invalid-utf8",
        "lone-surrogate", "many-keys"])
def test_deep_huge_or_invalid_json_is_a_400(hostile_server, mallory, body):
    assert len(body) <= 64 * 1024
    reply = exchange(hostile_server.port, request("POST", "/api/tasks", mallory, body=body))
    assert_refused(reply, 400, "validation_error")


# --- slow clients -------------------------------------------------------------------------------

def _health_checks(base_url: str, stop: threading.Event) -> list[tuple[float, float]]:
    """GET /health every 0.1 s until `stop`: (started, ended) of each, all answered 200."""
    checks = []
    with httpx.Client(base_url=base_url, timeout=10) as client:
        while not stop.is_set():
            started = time.monotonic()
            assert client.get("/health").status_code == 200
            checks.append((started, time.monotonic()))
            stop.wait(0.1)
    return checks


def assert_answered_meanwhile(checks: list[tuple[float, float]], replies: list[Reply]) -> None:
    """/health was answered while every slow client was connected and none cut off yet.

    By order, not by a latency bound: a worker blocked by the slow clients answers nothing in that
    window (READ_TIMEOUT_S long, ~20 checks), however fast or slow the machine is.
    """
    opened, first_cut = max(r.started for r in replies), min(r.ended for r in replies)
    meanwhile = [c for c in checks if opened <= c[0] and c[1] <= first_cut]
    assert len(meanwhile) >= 3, f"/health answered {len(meanwhile)} times while the slow clients were connected"


@pytest.mark.slow
def test_slow_bodies_are_cut_off_with_408_and_the_worker_keeps_answering(hostile_server, mallory):
    """Eight clients send fast headers, then their body a byte a second."""
    head = request("POST", "/api/tasks", mallory, body=b"", content_length=40)
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=9) as pool:
        health = pool.submit(_health_checks, hostile_server.base_url, stop)
        slow = [pool.submit(exchange, hostile_server.port, head, *[b" "] * 30, delay=1.0) for _ in range(8)]
        replies = [f.result() for f in slow]
        stop.set()
        checks = health.result()
    for reply in replies:
        assert_refused(reply, 408, "request_timeout")
        assert reply.seconds <= READ_TIMEOUT_S + SLACK_S, reply
    assert_answered_meanwhile(checks, replies)


@pytest.mark.slow
def test_slow_headers_are_cut_off_and_the_worker_keeps_answering(hostile_server):
    """A client sending its request head a line a second is disconnected by granian."""
    lines = [b"GET /health HTTP/1.1\r\n"] + [b"X-Slow-%d: 1\r\n" % i for i in range(30)]
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=5) as pool:
        health = pool.submit(_health_checks, hostile_server.base_url, stop)
        slow = [pool.submit(exchange, hostile_server.port, *lines, delay=1.0) for _ in range(4)]
        replies = [f.result() for f in slow]
        stop.set()
        checks = health.result()
    for reply in replies:
        assert_refused(reply)
        assert reply.seconds <= READ_TIMEOUT_S + SLACK_S, reply
    assert_answered_meanwhile(checks, replies)
