"""The deployment tests: real `kasparro serve` processes behind this machine's haproxy, on a
private PostgreSQL (with a streaming replica) and a private Redis (never the shared servers),
each started for one test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.deploy.haproxy import haproxy_binary
from tests.support.database import migrated_engine
from tests.support.postgres_server import (
    PostgresServer,
    private_postgres_replica,
    private_postgres_server,
)
from tests.support.redis_server import RedisServer, private_redis_server


@pytest.fixture
def haproxy() -> str:
    """The haproxy executable; the test is skipped where there is none."""
    binary = haproxy_binary()
    if binary is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    return binary


@pytest.fixture
async def postgres() -> AsyncIterator[PostgresServer]:
    async with private_postgres_server() as server:
        yield server


@pytest.fixture
async def database(postgres: PostgresServer) -> AsyncIterator[AsyncEngine]:
    """The private cluster's database, migrated, and an engine on it for the test's checks."""
    async with migrated_engine(postgres.url) as engine:
        yield engine


@pytest.fixture
async def replica(postgres: PostgresServer, database: AsyncEngine) -> AsyncIterator[PostgresServer]:
    """A streaming replica (hot standby) of the private cluster, made after its migration."""
    async with private_postgres_replica(postgres) as server:
        yield server


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    async with private_redis_server() as server:
        yield server
