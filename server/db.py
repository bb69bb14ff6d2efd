"""Engine and session factory built from Settings. No application imports beyond settings."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from server.settings import Settings


def create_engine(settings: Settings, **overrides: Any) -> AsyncEngine:
    """The async engine for DATABASE_URL, tuned per backend."""
    if settings.is_sqlite:
        engine = create_async_engine(
            settings.database_url, connect_args={"timeout": 30}, **overrides
        )
        _configure_sqlite(engine.sync_engine)
        return engine
    options: dict[str, Any] = {
        "pool_size": settings.db_pool_size,
        "max_overflow": settings.db_pool_size,
        # A connection killed by a database restart is detected and replaced, not reused.
        "pool_pre_ping": True,
        "pool_recycle": 1800,
        # During an outage a request fails after the connect timeout, not a minute later.
        "connect_args": {"timeout": settings.db_connect_timeout, "command_timeout": 60},
    }
    options.update(overrides)
    return create_async_engine(settings.database_url, **options)


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[Any]:
    return async_sessionmaker(engine, expire_on_commit=False)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        # WAL lets the server read while a run writes; foreign keys are off by default in SQLite.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()


async def ping(engine: AsyncEngine) -> bool:
    """True when the database answers a trivial query."""
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception:  # any failure means "not reachable" to a health check
        return False
    return True
