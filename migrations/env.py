"""Alembic environment: async engine from Settings, the service's metadata, both backends."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from server.db import create_engine
from server.partitions import include_name
from server.settings import Settings
from server.tables import metadata

config = context.config


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        include_name=include_name,
        # SQLite cannot ALTER most things: batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )


def _run(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(settings: Settings) -> None:
    engine = create_engine(settings)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_offline() -> None:
    settings = config.attributes.get("settings") or Settings.load()
    context.configure(
        url=settings.database_url,
        target_metadata=metadata,
        literal_binds=True,
        compare_type=True,
        include_name=include_name,
        render_as_batch=settings.is_sqlite,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    # The service passes its own connection (it runs inside an event loop already).
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    settings = config.attributes.get("settings") or Settings.load()
    asyncio.run(_run_async(settings))


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
