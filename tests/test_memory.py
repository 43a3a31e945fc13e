"""Issue #11.1: what bounds a worker's memory with many keep-alive connections stays in place.

The numbers (10,000 connections, every process under 100 MB) come from bench/users10k.py; these
tests pin the two server settings that got there, each by what it does rather than by a total.
"""

from __future__ import annotations

import asyncio
import socket

import psutil
import pytest
from test_metrics import serving

from conftest import wait_until

MIB = 2**20


def test_http2_is_not_spoken(server_port):
    """HTTP/1.1 only: granian's HTTP/2 detection cost about 9 KiB more per keep-alive connection."""
    with socket.create_connection(("127.0.0.1", server_port), timeout=10) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        try:
            reply = sock.recv(64)
        except ConnectionResetError:
            reply = b""
    # An HTTP/2 server answers the preface with a SETTINGS frame (type 4, in the frame's fourth byte).
    assert reply == b"" or reply.startswith(b"HTTP/1.1 "), reply


@pytest.fixture
def server_port(server) -> int:
    return server.port


async def _hold(port: int, count: int, measure: psutil.Process) -> int:
    """Open `count` connections, one /health on each, keep them all open; the worker's RSS then; close them."""
    gate = asyncio.Semaphore(200)
    streams: list[asyncio.StreamWriter] = []

    async def one() -> None:
        async with gate:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            streams.append(writer)

    await asyncio.gather(*(one() for _ in range(count)))
    rss = measure.memory_info().rss
    for writer in streams:
        writer.close()
    return rss


@pytest.mark.slow
def test_a_worker_gives_back_the_memory_of_connections_that_closed(database, tmp_path):
    """granian's allocator returns freed pages at once (api/server.py, ALLOCATOR_OPTIONS).

    jemalloc's default keeps them for 10 s and, with no background thread, purges only while it
    allocates: a worker that had served 3,000 connections kept their memory after they closed.
    """
    with serving(database, tmp_path, WORKERS="1") as srv:
        assert srv.process is not None
        worker = wait_until(lambda: psutil.Process(srv.process.pid).children(), timeout=10, what="a worker")[0]
        asyncio.run(_hold(srv.port, 200, worker))  # warm up: first-use allocations of the worker
        # Clients' connections only: with TEST_DATABASE_URL the pool's connections are TCP too.
        wait_until(lambda: not [c for c in worker.net_connections("tcp") if c.laddr and c.laddr.port == srv.port
                                and c.status == psutil.CONN_ESTABLISHED],
                   timeout=10, what="the warm-up connections closed")
        before = worker.memory_info().rss
        held = asyncio.run(_hold(srv.port, 3000, worker))
        grown = held - before
        assert grown > 10 * MIB, f"3,000 connections should cost more than {grown / MIB:.1f} MiB"
        wait_until(lambda: worker.memory_info().rss < before + grown / 3, timeout=10,
                   what=f"the worker to give back the memory of 3,000 closed connections "
                        f"(held +{grown / MIB:.0f} MiB, now +{(worker.memory_info().rss - before) / MIB:.0f})")
