"""A PostgreSQL that is shutting down or starting up is unavailable, not broken: requests get
SERVICE_UNAVAILABLE (retry later), never INTERNAL_SERVER_ERROR.

A private cluster (never the shared one) is put into the state a fast shutdown passes through:
stopped in `smart` mode while one session stays open, it refuses every new connection with
"the database system is shutting down" (SQLSTATE 57P03) until that session ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from graphql import GraphQLError
from sqlalchemy import text

from schema.extensions import classify_error
from server.db import create_engine
from server.settings import Settings
from tests.support.asgi import graphql, running_app
from tests.support.postgres_server import (
    PostgresServer,
    one_price_settings,
    private_postgres_server,
)

pytestmark = pytest.mark.slow

PRICES = "{ prices(first: 5) { edges { node { symbol priceUsd } } } }"


@pytest.fixture
async def postgres() -> AsyncIterator[PostgresServer]:
    async with private_postgres_server() as server:
        yield server


@pytest.fixture
async def settings(postgres: PostgresServer) -> Settings:
    return await one_price_settings(postgres)


def _driver_url(postgres: PostgresServer) -> str:
    return f"postgresql://postgres@127.0.0.1:{postgres.port}/postgres"


async def _begin_shutdown(postgres: PostgresServer) -> asyncpg.Connection:
    """Start a smart shutdown that an open session holds up; returns that session (closing it
    lets the shutdown finish)."""
    holder = await asyncpg.connect(_driver_url(postgres))
    await postgres._run(  # pg_ctl without waiting: the server stays in its shutdown state
        str(postgres._bin / "pg_ctl"), "-D", str(postgres.data), "-m", "smart", "-W", "stop"
    )
    for _ in range(100):  # until the postmaster has received the signal
        try:
            probe = await asyncpg.connect(_driver_url(postgres))
        except asyncpg.CannotConnectNowError:
            return holder
        await probe.close()
        await asyncio.sleep(0.05)
    raise AssertionError("the server did not begin shutting down")


async def _until_running(postgres: PostgresServer, statement: str, count: int) -> None:
    """Wait until the server is running `statement` in `count` sessions."""
    watcher = await asyncpg.connect(_driver_url(postgres))
    try:
        async with asyncio.timeout(30):
            while (
                await watcher.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = $1",
                    statement,
                )
                < count
            ):
                await asyncio.sleep(0.02)
    finally:
        await watcher.close()


def codes(body: dict[str, object]) -> set[str]:
    errors = body.get("errors") or []
    assert isinstance(errors, list)
    return {error["extensions"]["code"] for error in errors}


async def test_a_database_shutting_down_is_service_unavailable(
    postgres: PostgresServer, settings: Settings
) -> None:
    async with running_app(settings) as (app, client):
        assert "errors" not in await graphql(client, PRICES)
        holder = await _begin_shutdown(postgres)
        try:
            # The app's pooled connections outlive a smart shutdown: drop them, so the next
            # request connects and meets "the database system is shutting down".
            await app.state.engine.dispose()
            for _ in range(2):
                body = await graphql(client, PRICES)
                assert codes(body) == {"SERVICE_UNAVAILABLE"}, body
                assert "Traceback" not in str(body)
        finally:
            await holder.close()


async def test_every_driver_error_of_a_stopping_server_is_classified_unavailable(
    postgres: PostgresServer, settings: Settings
) -> None:
    """The errors themselves, as the driver raises them (the compiled path reads through
    asyncpg directly) and as SQLAlchemy wraps them."""
    engine = create_engine(settings)
    errors: list[Exception] = []
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

        async def in_flight() -> None:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT pg_sleep(30)"))

        query = asyncio.create_task(in_flight())
        session = await asyncpg.connect(_driver_url(postgres))
        raw_query = asyncio.create_task(session.fetch("SELECT pg_sleep(30)"))
        await _until_running(postgres, "SELECT pg_sleep(30)", 2)
        holder = await _begin_shutdown(postgres)
        await engine.dispose()  # the next checkout connects afresh
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:
            errors.append(exc)  # SQLAlchemy's DBAPIError around CannotConnectNowError
        try:
            await asyncpg.connect(_driver_url(postgres))
        except Exception as exc:
            errors.append(exc)  # asyncpg's own CannotConnectNowError
        await holder.close()
        await postgres.stop("fast")  # in-flight statements: "terminating connection ..."
        for task in (query, raw_query):
            try:
                await task
            except Exception as exc:
                errors.append(exc)
        await session.close()
    finally:
        await engine.dispose()
    assert len(errors) == 4, errors
    assert any("shutting down" in str(error) for error in errors)
    for error in errors:
        classified = classify_error(GraphQLError(str(error), original_error=error, path=["x"]))
        assert classified.extensions == {"code": "SERVICE_UNAVAILABLE"}, repr(error)


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.CannotConnectNowError("the database system is shutting down"),
        asyncpg.exceptions.AdminShutdownError("terminating connection"),
        asyncpg.exceptions.CrashShutdownError("terminating connection"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
        asyncpg.exceptions.ConnectionFailureError("connection failure"),
        asyncpg.exceptions.TooManyConnectionsError("too many clients already"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_unavailable_sqlstates(error: Exception) -> None:
    classified = classify_error(GraphQLError(str(error), original_error=error, path=["x"]))
    assert classified.extensions == {"code": "SERVICE_UNAVAILABLE"}


def test_a_query_error_is_still_internal() -> None:
    error = asyncpg.exceptions.DivisionByZeroError("division by zero")
    classified = classify_error(GraphQLError(str(error), original_error=error, path=["x"]))
    assert classified.extensions == {"code": "INTERNAL_SERVER_ERROR"}
