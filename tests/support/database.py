"""A database migrated to head, the way `kasparro migrate` leaves it: the one routine every test
and support module uses to prepare a database (the migration tests step through revisions
themselves)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from server.db import create_engine
from server.migrate import upgrade
from server.settings import Settings


@asynccontextmanager
async def migrated_engine(
    database: str | Settings, revision: str = "head", **engine_options: Any
) -> AsyncIterator[AsyncEngine]:
    """The database at a URL (or the one `Settings` name) migrated to `revision`, and an engine
    on it made from those settings with `engine_options` (disposed afterwards)."""
    settings = (
        database
        if isinstance(database, Settings)
        else Settings.load(_env_file=None, DATABASE_URL=database)
    )
    engine = create_engine(settings, **engine_options)
    try:
        await upgrade(engine, settings, revision)
        yield engine
    finally:
        await engine.dispose()


async def migrate(database: str | Settings) -> None:
    """Migrate the database at a URL (or the one `Settings` name) to head."""
    async with migrated_engine(database):
        pass
