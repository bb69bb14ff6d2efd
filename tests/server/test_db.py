"""Reads: autocommit connections, no liveness round trip, and a connection the server closed is
replaced (at checkout when asyncpg saw it close, else by `read` running the work again)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from sqlalchemy import exc, text
from sqlalchemy.ext.asyncio import AsyncConnection

from server.db import (
    create_engine,
    create_maintenance_engine,
    driver_connection,
    read,
    read_engine,
)
from server.settings import Settings


async def in_transaction(conn: AsyncConnection) -> bool:
    """Whether the server holds a transaction open on `conn` (asyncpg knows)."""
    driver: Any = (await conn.get_raw_connection()).driver_connection
    return bool(driver.is_in_transaction())


def engine_for(url: str) -> Any:
    return create_engine(Settings.load(_env_file=None, DATABASE_URL=url))


async def test_a_read_runs_again_once_when_its_connection_died(sqlite_url: str) -> None:
    engine = engine_for(sqlite_url)
    calls = 0

    async def work(conn: AsyncConnection) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise exc.DBAPIError("SELECT 1", None, OSError("gone"), connection_invalidated=True)
        return int(await conn.scalar(text("SELECT 1")) or 0)

    try:
        assert await read(engine, work) == 1
        assert calls == 2
    finally:
        await engine.dispose()


async def test_any_other_error_of_a_read_is_not_retried(sqlite_url: str) -> None:
    engine = engine_for(sqlite_url)
    calls = 0

    async def work(conn: AsyncConnection) -> None:
        nonlocal calls
        calls += 1
        await conn.execute(text("SELECT * FROM no_such_table"))

    try:
        with pytest.raises(exc.OperationalError):
            await read(engine, work)
        assert calls == 1
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_reads_are_autocommit_and_writes_transactions(pg_url: str) -> None:
    engine = engine_for(pg_url)
    try:
        async with read_engine(engine).connect() as conn:
            await conn.execute(text("SELECT 1"))
            assert not await in_transaction(conn)
        async with engine.connect() as conn:  # writers keep their transactions
            await conn.execute(text("SELECT 1"))
            assert await in_transaction(conn)
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_a_pooled_connection_the_server_closed_is_replaced_at_checkout(pg_url: str) -> None:
    engine, killer = engine_for(pg_url), engine_for(pg_url)
    try:
        async with engine.connect() as conn:
            pid = await conn.scalar(text("SELECT pg_backend_pid()"))
        async with killer.connect() as other:
            await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        await asyncio.sleep(0.2)  # asyncpg reads the server's goodbye
        # No retry here: the pool hands out a live connection, not the dead one.
        for _ in range(3):
            async with engine.connect() as conn:
                assert await conn.scalar(text("SELECT pg_backend_pid()")) != pid
    finally:
        await engine.dispose()
        await killer.dispose()


@pytest.mark.postgres
async def test_a_driver_connection_reads_outside_a_transaction_and_returns_to_the_pool(
    pg_url: str,
) -> None:
    engine = engine_for(pg_url)
    try:
        async with driver_connection(engine) as driver:
            pid = await driver.fetchval("SELECT pg_backend_pid()")
            assert not driver.is_in_transaction()
        assert engine.sync_engine.pool.checkedout() == 0
        async with driver_connection(engine) as driver:
            assert await driver.fetchval("SELECT pg_backend_pid()") == pid
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_a_driver_connection_the_server_closed_is_not_pooled_again(pg_url: str) -> None:
    engine, killer = engine_for(pg_url), engine_for(pg_url)
    pid = None

    async def read_after_the_server_closed_it() -> None:
        nonlocal pid
        async with driver_connection(engine) as driver:
            pid = await driver.fetchval("SELECT pg_backend_pid()")
            async with killer.connect() as other:
                await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            await driver.fetchval("SELECT 1")

    # What asyncpg raises depends on when it reads the server's goodbye.
    gone = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)
    try:
        with pytest.raises(gone):
            await read_after_the_server_closed_it()
        assert engine.sync_engine.pool.checkedout() == 0
        async with driver_connection(engine) as driver:
            assert await driver.fetchval("SELECT pg_backend_pid()") != pid
    finally:
        await engine.dispose()
        await killer.dispose()


async def command_timeout(engine: Any) -> float | None:
    async with engine.connect() as conn:
        driver: Any = (await conn.get_raw_connection()).driver_connection
        return driver._config.command_timeout  # type: ignore[no-any-return]


@pytest.mark.postgres
async def test_migrations_and_retention_run_without_the_requests_statement_timeout(
    pg_url: str,
) -> None:
    # A request's statement ends after a minute; converting or back-filling a table of many
    # millions of rows takes longer, and must not be cut off half-way.
    settings = Settings.load(_env_file=None, DATABASE_URL=pg_url)
    served, maintenance = create_engine(settings), create_maintenance_engine(settings)
    try:
        assert await command_timeout(served) == 60
        assert await command_timeout(maintenance) is None
    finally:
        await served.dispose()
        await maintenance.dispose()
