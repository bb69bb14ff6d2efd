"""Shared fixtures: real PostgreSQL, real Redis, SQLite files.

PostgreSQL and Redis come from KASPARRO_TEST_POSTGRES_URL / KASPARRO_TEST_REDIS_URL (defaults: the
local servers). Each test gets its own database and its own Redis key/channel namespace and cleans
up after itself. An unreachable server fails the test with a message saying how to start it.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.database import migrate, migrated_engine
from tests.support.services import (
    postgres_admin_url,
    postgres_template,
    redis_base_url,
    temporary_postgres_database,
    temporary_redis_namespace,
)

MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"

# The security suite's case count, printed after any run that includes it.
pytest_plugins = ["tests.security.summary"]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests build Settings explicitly: no variable of the developer's shell leaks in."""
    for name in list(os.environ):
        if (
            name in {"DATABASE_URL", "REDIS_URL"}
            or name.startswith(("KASPARRO_", "COINGECKO_", "COINPAPRIKA_"))
        ) and not name.startswith("KASPARRO_TEST_"):
            monkeypatch.delenv(name)


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for this test, dropped afterwards."""
    async with temporary_postgres_database(postgres_admin_url()) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'kasparro.db'}"


@pytest.fixture
async def migrated_sqlite_url(sqlite_url: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """`sqlite_url` already migrated to head, for the tests that do not depend on the backend
    (a copy of a file the migrations were run on once per test session)."""
    database = make_url(sqlite_url).database
    assert database is not None
    shutil.copyfile(await _sqlite_template(tmp_path_factory), database)
    return sqlite_url


@pytest.fixture(params=["sqlite", "postgres"])
async def db_url(
    request: pytest.FixtureRequest, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    """The same test on SQLite and on PostgreSQL: an empty database, or, for a test that asks
    for `engine`, a copy of one the migrations were run on once per schema (what `engine`
    would make of the empty one, made in a fraction of the time)."""
    migrated = "engine" in request.fixturenames
    if request.param == "sqlite":
        path = tmp_path / "kasparro.db"
        if migrated:
            shutil.copyfile(await _sqlite_template(tmp_path_factory), path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    admin = postgres_admin_url()
    template = await postgres_template(admin, _schema_key(), migrate) if migrated else None
    async with temporary_postgres_database(admin, template=template) as url:
        yield url


@functools.cache
def _schema_key() -> str:
    """A digest of the migrations: a template made by other migrations is not used."""
    digest = hashlib.sha256()
    for path in sorted(MIGRATIONS.rglob("*.py")):
        digest.update(path.relative_to(MIGRATIONS).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


_SQLITE_TEMPLATES: dict[str, Path] = {}


async def _sqlite_template(factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, made once per test session (its engine disposed, so the file
    holds everything: no WAL file beside it)."""
    key = _schema_key()
    if key not in _SQLITE_TEMPLATES:
        path = factory.mktemp("template") / "kasparro.db"
        await migrate(f"sqlite+aiosqlite:///{path}")
        _SQLITE_TEMPLATES[key] = path
    return _SQLITE_TEMPLATES[key]


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


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """A migrated database (SQLite and PostgreSQL in turn) and its engine."""
    async with migrated_engine(db_url) as engine:
        yield engine
