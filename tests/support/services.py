"""Access to the test PostgreSQL and Redis, with a clear failure when they are not running."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest
import redis.asyncio as aioredis
from sqlalchemy.engine import make_url

START_POSTGRES = (
    "start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` "
    "(or point KASPARRO_TEST_POSTGRES_URL at a PostgreSQL you can create databases on)"
)
START_REDIS = (
    "start it with `redis-server --daemonize yes --port 6379 --save ''` "
    "(or point KASPARRO_TEST_REDIS_URL at a Redis)"
)


def postgres_admin_url() -> str:
    return os.environ.get(
        "KASPARRO_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
    )


def redis_base_url() -> str:
    return os.environ.get("KASPARRO_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@asynccontextmanager
async def temporary_postgres_database(admin_url: str) -> AsyncIterator[str]:
    """Create a uniquely named database, yield its SQLAlchemy URL, drop it afterwards."""
    name = f"kasparro_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = await asyncpg.connect(_asyncpg_dsn(admin_url), timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL at {admin_url} is unreachable ({exc}); {START_POSTGRES}")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@asynccontextmanager
async def temporary_redis_namespace(url: str, namespace: str) -> AsyncIterator[None]:
    """Check Redis answers; afterwards delete every key that starts with `namespace`."""
    client = aioredis.Redis.from_url(url)
    try:
        try:
            await client.ping()
        except (OSError, aioredis.ConnectionError) as exc:
            pytest.fail(f"Redis at {url} is unreachable ({exc}); {START_REDIS}")
        yield
        keys = [key async for key in client.scan_iter(match=f"{namespace}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
