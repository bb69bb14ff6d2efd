"""Access to the test PostgreSQL and Redis, with a clear failure when they are not running."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
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
async def temporary_postgres_database(
    admin_url: str, *, template: str | None = None
) -> AsyncIterator[str]:
    """Create a uniquely named database (a copy of the database `template` when given), yield
    its SQLAlchemy URL, drop it afterwards."""
    url = await create_postgres_database(admin_url, template=template)
    try:
        yield url
    finally:
        await drop_postgres_database(admin_url, url)


async def create_postgres_database(admin_url: str, *, template: str | None = None) -> str:
    """Create a uniquely named database (a copy of the database `template` when given) on the
    server of `admin_url`; its SQLAlchemy URL. For a database that outlives one event loop;
    otherwise `temporary_postgres_database`."""
    name = f"kasparro_test_{uuid.uuid4().hex[:12]}"
    admin = await _admin(admin_url)
    try:
        # WAL_LOG (the default): a FILE_COPY would checkpoint, flushing every test's writes.
        copy = f' TEMPLATE "{template}"' if template else ""
        await admin.execute(f'CREATE DATABASE "{name}"{copy}')
    finally:
        await admin.close()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


async def drop_postgres_database(admin_url: str, url: str) -> None:
    """Drop the database at `url` (made by `create_postgres_database`), connections and all."""
    admin = await _admin(admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')
    finally:
        await admin.close()


async def postgres_template(
    admin_url: str, key: str, build: Callable[[str], Awaitable[None]]
) -> str:
    """The name of a template database for `key` (e.g. a digest of the migrations), made once
    with `build(url)` and kept on the server for later runs; templates of other keys are dropped.

    Built under another name and renamed when complete, so a run that stops half-way, or two
    runs building at once, never leave a half-built template under the final name."""
    final = f"kasparro_template_{key}"
    admin = await _admin(admin_url)
    try:
        if await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", final):
            return final
        building = f"kasparro_building_{uuid.uuid4().hex[:12]}"
        await admin.execute(f'CREATE DATABASE "{building}"')
        try:
            await build(make_url(admin_url).set(database=building).render_as_string(False))
            await admin.execute(f'ALTER DATABASE "{building}" RENAME TO "{final}"')
        except BaseException:
            await admin.execute(f'DROP DATABASE IF EXISTS "{building}" WITH (FORCE)')
            if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", final):
                raise
        stale = await admin.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE 'kasparro\\_template\\_%'"
            " AND datname <> $1",
            final,
        )
        for row in stale:
            await admin.execute(f'DROP DATABASE IF EXISTS "{row["datname"]}" WITH (FORCE)')
        return final
    finally:
        await admin.close()


async def _admin(admin_url: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(_asyncpg_dsn(admin_url), timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL at {admin_url} is unreachable ({exc}); {START_POSTGRES}")


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
