"""Run the alembic migrations from inside the service (`kasparro migrate`, `kasparro up`)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

import migrations
from server.settings import Settings

MIGRATIONS_DIR = Path(migrations.__file__).resolve().parent


def alembic_config(settings: Settings) -> Config:
    """An alembic Config that needs no alembic.ini: the script location is the package."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["settings"] = settings
    return config


async def upgrade(engine: AsyncEngine, settings: Settings, revision: str = "head") -> None:
    """Migrate the database behind `engine` up to `revision`."""
    await _run(engine, settings, lambda config: command.upgrade(config, revision))


async def downgrade(engine: AsyncEngine, settings: Settings, revision: str = "base") -> None:
    """Migrate down to `revision` (base: an empty database)."""
    await _run(engine, settings, lambda config: command.downgrade(config, revision))


async def _run(engine: AsyncEngine, settings: Settings, action: object) -> None:
    def in_sync(connection: Connection) -> None:
        config = alembic_config(settings)
        config.attributes["connection"] = connection
        assert callable(action)
        action(config)

    async with engine.begin() as connection:
        await connection.run_sync(in_sync)
