"""Shared fixtures: real PostgreSQL, real Redis, SQLite files.

PostgreSQL and Redis come from KASPARRO_TEST_POSTGRES_URL / KASPARRO_TEST_REDIS_URL (defaults: the
local servers). Each test gets its own database and its own Redis key/channel namespace and cleans
up after itself. An unreachable server fails the test with a message saying how to start it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from server.db import create_engine
from server.migrate import upgrade
from server.settings import Settings
from tests.support.services import (
    postgres_admin_url,
    redis_base_url,
    temporary_postgres_database,
    temporary_redis_namespace,
)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests build Settings explicitly: no variable of the developer's shell leaks in."""
    for name in list(os.environ):
        if (
            name in {"DATABASE_URL", "REDIS_URL"}
            or name.startswith(("KASPARRO_", "COINGECKO_", "COINPAPRIKA_"))
        ) and not name.startswith("KASPARRO_TEST_"):
            monkeypatch.delenv(name)
    return


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for this test, dropped afterwards."""
    async with temporary_postgres_database(postgres_admin_url()) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'kasparro.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The same test on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'kasparro.db'}"
        return
    async with temporary_postgres_database(postgres_admin_url()) as url:
        yield url


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """The shared Redis, checked to be reachable; keys under `redis_namespace` are removed after."""
    url = redis_base_url()
    async with temporary_redis_namespace(url, "kasparro-test-unused"):
        yield url


@pytest.fixture
async def redis_namespace(redis_url: str) -> AsyncIterator[str]:
    """A unique prefix for this test's Redis keys and pub/sub channels."""
    namespace = f"kasparro-test-{uuid.uuid4().hex[:12]}"
    async with temporary_redis_namespace(redis_url, namespace):
        yield namespace


@asynccontextmanager
async def migrated_engine(url: str) -> AsyncIterator[AsyncEngine]:
    """The database at `url` migrated to head, and its engine (disposed afterwards)."""
    settings = Settings.load(_env_file=None, DATABASE_URL=url)
    engine = create_engine(settings)
    await upgrade(engine, settings)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """A migrated database (SQLite and PostgreSQL in turn) and its engine."""
    async with migrated_engine(db_url) as engine:
        yield engine
