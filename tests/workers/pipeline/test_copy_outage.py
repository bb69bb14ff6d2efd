"""A batch's COPY cut by the database going away fails with that cause, not with the error of
the transaction's rollback on the broken connection.

Seen in a chaos run (PostgreSQL restarted under ingestion): the run the restart cut short ended
`InterfaceError: cannot perform operation: another operation is in progress`, without its cause
"database unavailable". The COPY runs on asyncpg under SQLAlchemy's transaction; when the
connection broke mid-COPY, `engine.begin()` rolled back on it and raised the rollback's own
error, the cause left only as its context. Here the writing backend is terminated mid-COPY.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import InterfaceError
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support.services import postgres_admin_url, temporary_postgres_database
from workers.pipeline.causes import BAD_DATA, DATABASE, cause_of
from workers.pipeline.postgres_copy import driver
from workers.pipeline.runner import run_error

pytestmark = pytest.mark.postgres


async def _rows(started: asyncio.Event, cut: asyncio.Event) -> AsyncIterator[tuple[int, str]]:
    """Rows until a while after the connection was cut (asyncpg may go on reading them)."""
    after = 0
    for n in range(10_000_000):
        if n % 1_000 == 0:
            started.set()
            await asyncio.sleep(0)
        if cut.is_set():
            after += 1
            if after > 50_000:
                return
        yield (n, "x" * 50)


async def _copy_cut_short(url: str) -> BaseException | None:
    """The error `engine.begin()` raises when its COPY's backend is terminated midway."""
    # With the worker's statement timeout, shorter: asyncpg may go on writing the COPY to the
    # dead socket and then wait for an answer that never comes; the timeout ends that wait.
    engine = create_async_engine(url, connect_args={"command_timeout": 10})
    other = create_async_engine(url)
    started, cut = asyncio.Event(), asyncio.Event()

    async def terminate(pid: int) -> None:
        await started.wait()
        await asyncio.sleep(0.2)
        async with other.connect() as admin:
            await admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        cut.set()

    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE copied (n int, filler text)"))
        try:
            async with engine.begin() as conn:
                pid = await conn.scalar(text("SELECT pg_backend_pid()"))
                killer = asyncio.create_task(terminate(pid))
                async with driver(conn) as pg:
                    await pg.copy_records_to_table(
                        "copied", columns=["n", "filler"], records=_rows(started, cut)
                    )
        except Exception as exc:  # noqa: BLE001: what it is is the point
            return exc
        finally:
            await killer
        # Nothing was committed, and the engine goes on with a new connection.
        async with engine.connect() as conn:
            assert await conn.scalar(text("SELECT count(*) FROM copied")) == 0
        return None
    finally:
        await engine.dispose()
        await other.dispose()


async def test_a_copy_cut_by_the_database_going_away_fails_with_that_cause() -> None:
    async with temporary_postgres_database(postgres_admin_url()) as url:
        error = await _copy_cut_short(url)
    assert error is not None
    assert not isinstance(error, InterfaceError), run_error(error)
    assert cause_of(error) == DATABASE, run_error(error)


def _during(handled: BaseException, raised: BaseException) -> BaseException:
    """`raised` as raised while `handled` was being handled (Python sets its context so)."""
    raised.__context__ = handled
    return raised


def test_an_interface_error_raised_while_handling_an_outage_has_the_outage_as_cause() -> None:
    """The classification alone: a rollback's InterfaceError on the connection an outage
    broke is that outage; without it, no known cause; and only an interface error passes to
    what it was handling (a bad value found while handling an outage is bad data)."""
    busy = "cannot perform operation: another operation is in progress"
    cut = asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
    assert cause_of(_during(cut, asyncpg.InterfaceError(busy))) == DATABASE
    assert cause_of(asyncpg.InterfaceError(busy)) is None
    assert cause_of(_during(RuntimeError("no"), asyncpg.InterfaceError(busy))) is None
    bad = asyncpg.DataError("invalid input syntax for type numeric")
    assert cause_of(_during(cut, bad)) == BAD_DATA
