"""The wire client: statements sent in libpq pipeline mode behind one Sync, results as PostgreSQL sent them.

PostgreSQL runs every statement before a Sync in one implicit transaction, so a pipeline of
``set_config(..., true)`` and a handler's statement is one transaction and one network round trip
(api/db.py builds that pipeline; this module only speaks the protocol). Statements are prepared once
per connection when the caller keeps a `Prepared` set for it, and sent unnamed otherwise (behind a
transaction-mode pooler). Parameters are converted by psycopg's own dumpers and always travel apart
from the SQL text. Results are not converted: a handler's statement returns the response JSON, which
goes to the client as the bytes PostgreSQL sent. `bench/client.py` measures this module against
psycopg's own pipeline (README, "Performance").
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import select
from collections.abc import Mapping, Sequence
from typing import LiteralString

from psycopg import AsyncConnection, pq
from psycopg.adapt import PyFormat, Transformer
from psycopg.errors import error_from_result
from psycopg.pq.abc import PGconn, PGresult

Params = Mapping[str, object]
Row = tuple[bytes | None, ...]
# The names of the statements one connection has prepared (server-side state, forgotten with it).
Prepared = set[bytes]

_SUCCESS = frozenset({pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK})
# psycopg's dumpers for the parameters' Python types (str, int, bool, UUID, datetime, lists...), in
# PostgreSQL's text format; the SQL casts each parameter, so no type OIDs are sent.
_DUMPERS = Transformer()


class Statement:
    """A SQL statement with named ``%(name)s`` parameters, kept as written and ready to send.

    The text sent to PostgreSQL has them as ``$1, $2...``; `name` identifies its server-side prepared
    form, the same on every connection. With `prepare` False it is always sent unnamed: for statements
    too many or too rare to keep prepared on every connection, or that want a plan for their values.
    """

    __slots__ = ("_formats", "name", "param_names", "prepare", "sql", "text")

    def __init__(self, sql: LiteralString, *, prepare: bool = True) -> None:
        self.sql = sql
        self.prepare = prepare
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            if match[1] not in names:
                names.append(match[1])
            return f"${names.index(match[1]) + 1}"

        self.text = re.sub(r"%\((\w+)\)s", number, sql).encode()
        self.param_names = tuple(names)
        self.name = b"taskapi_" + hashlib.sha256(self.text).hexdigest()[:16].encode()
        self._formats = [PyFormat.TEXT] * len(names)

    def values(self, params: Params) -> list[bytes | None]:
        """The parameters in `$n` order, in PostgreSQL's text format; KeyError names a missing one."""
        dumped = _DUMPERS.dump_sequence([params[name] for name in self.param_names], self._formats)
        return [None if value is None else bytes(value) for value in dumped]


async def run(conn: AsyncConnection[object], commands: Sequence[tuple[Statement, Params]], *,
              prepared: Prepared | None, reply_timeout: float) -> PGresult:
    """Send `commands` with one Sync; return the last command's result.

    Raises the `psycopg.Error` of the first error PostgreSQL reported (the whole pipeline is one
    transaction, so it was rolled back), `psycopg.OperationalError` when the connection broke, and
    `TimeoutError` when no reply came within `reply_timeout` seconds. After any exception but a reported
    error, the connection is closed: its state is unknown (a cancelled request may have left half a
    pipeline on the wire), so the pool must replace it rather than lend it out again.
    """
    pgconn = conn.pgconn
    sent: list[bytes | None] = []  # per result: the name of a Prepare, or None for an execution
    clean = False
    pgconn.enter_pipeline_mode()
    try:
        for statement, params in commands:
            values = statement.values(params)
            if prepared is None or not statement.prepare:
                pgconn.send_query_params(statement.text, values)
            else:
                if statement.name not in prepared:
                    pgconn.send_prepare(statement.name, statement.text)
                    sent.append(statement.name)
                pgconn.send_query_prepared(statement.name, values)
            sent.append(None)
        pgconn.pipeline_sync()
        async with asyncio.timeout(reply_timeout):
            results = await _exchange(pgconn)
        clean = True
    finally:
        if clean:
            pgconn.exit_pipeline_mode()
        else:
            pgconn.finish()
    error = None
    for prepare_name, result in zip(sent, results, strict=True):
        if prepare_name is not None and result.status == pq.ExecStatus.COMMAND_OK:
            assert prepared is not None
            prepared.add(prepare_name)  # not transactional: it stays, whatever the executions did
        elif error is None and result.status not in _SUCCESS:
            error = result
    if error is not None:
        raise error_from_result(error, encoding=conn.info.encoding)
    return results[-1]


def first_row(result: PGresult) -> Row | None:
    """The first row of `result` as PostgreSQL sent it (text format), or None when it has none."""
    if result.ntuples == 0:
        return None
    return tuple(result.get_value(0, col) for col in range(result.nfields))


def all_rows(result: PGresult) -> list[Row]:
    """Every row of `result` as PostgreSQL sent it (text format)."""
    return [tuple(result.get_value(row, col) for col in range(result.nfields)) for row in range(result.ntuples)]


def is_idle_and_sound(conn: AsyncConnection[object]) -> bool:
    """Whether an idle pooled connection may be used, without a round trip.

    An idle connection has nothing to read. If its socket is readable, the server has sent
    something: almost always the goodbye of a shutdown or a terminated backend, then EOF (rarely a
    notice). Either way the connection is not trusted with a request and gets replaced.
    """
    if conn.closed or conn.broken:
        return False
    # poll, not select: select fails on descriptors above 1024, common with many client sockets.
    poller = select.poll()
    poller.register(conn.pgconn.socket, select.POLLIN)
    return not poller.poll(0)


async def _exchange(pgconn: PGconn) -> list[PGresult]:
    """Flush a pipeline ended by a Sync and read one result per command, up to the Sync.

    Raises `psycopg.OperationalError` when the connection breaks.
    """
    loop = asyncio.get_running_loop()
    fd = pgconn.socket
    while pgconn.flush():
        await _ready(loop, fd, write=True)
    results: list[PGresult] = []
    while True:
        pgconn.consume_input()
        while not pgconn.is_busy():
            result = pgconn.get_result()
            if result is None:
                continue  # the end of one command's results
            if result.status == pq.ExecStatus.PIPELINE_SYNC:
                return results
            results.append(result)
        await _ready(loop, fd)


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, *, write: bool = False) -> None:
    """Wait until `fd` is readable (or writable)."""
    future: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not future.done():  # the callback may fire again before this task resumes
            future.set_result(None)

    if write:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await future
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)

