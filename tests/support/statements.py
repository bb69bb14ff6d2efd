"""Watching what the app does to its database, and waiting for background work."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from schema.live.hub import POLL_OPTION


@contextmanager
def recorded_statements(engine: AsyncEngine) -> Iterator[list[str]]:
    """Every SQL statement `engine` sends while the block runs, in order; not the live hub's
    background looks for other processes' commits (they are no request's cost)."""
    statements: list[str] = []

    def record(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not conn.get_execution_options().get(POLL_OPTION):
            statements.append(statement)

    sync_engine = engine.sync_engine
    event.listen(sync_engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(sync_engine, "before_cursor_execute", record)


@contextmanager
def recorded_on_the_wire(engine: AsyncEngine) -> Iterator[list[str]]:
    """What asyncpg sends besides the prepared statements `recorded_statements` sees: BEGIN,
    COMMIT and ROLLBACK, the pool's liveness ping. Only connections `engine` opens while the
    block runs are watched (dispose its pool first); read the list after an `await`, as asyncpg
    reports on the next turn of the event loop."""
    sent: list[str] = []
    drivers: list[Any] = []

    def log(record: Any) -> None:
        sent.append(record.query)

    def watch(dbapi_connection: Any, _record: Any) -> None:
        driver = dbapi_connection.driver_connection
        driver.add_query_logger(log)
        drivers.append(driver)

    sync_engine = engine.sync_engine
    event.listen(sync_engine, "connect", watch)
    try:
        yield sent
    finally:
        event.remove(sync_engine, "connect", watch)
        for driver in drivers:
            driver.remove_query_logger(log)


def selects(statements: list[str]) -> list[str]:
    return [s for s in statements if s.lstrip().upper().startswith(("SELECT", "WITH"))]


async def eventually(
    predicate: Callable[[], bool], *, timeout: float = 5.0, what: str = "condition"
) -> None:
    """Wait until `predicate()` holds, polling; fail after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)
