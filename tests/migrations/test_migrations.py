"""The migrations build exactly the models' schema on both databases, and undo it."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from server.db import create_engine
from server.migrate import downgrade, upgrade
from server.partitions import include_name, is_partition_name
from server.settings import Settings
from server.tables import PRICES_PAIR_STATISTICS, metadata


def _differences(connection: Connection) -> list[Any]:
    opts = {"compare_type": True, "include_name": include_name}
    context = MigrationContext.configure(connection, opts=opts)
    return list(compare_metadata(context, metadata))


def _tables(connection: Connection) -> set[str]:
    names = set(inspect(connection).get_table_names()) - {"alembic_version"}
    return {name for name in names if not is_partition_name(name)}


async def _snapshot(engine: AsyncEngine) -> tuple[set[str], list[Any]]:
    async with engine.connect() as conn:
        return await conn.run_sync(_tables), await conn.run_sync(_differences)


async def test_up_down_and_up_again_leaves_the_models_schema(db_url: str) -> None:
    settings = Settings.load(_env_file=None, DATABASE_URL=db_url)
    engine = create_engine(settings)
    try:
        await upgrade(engine, settings)
        tables, differences = await _snapshot(engine)
        assert tables == set(metadata.tables)
        assert differences == []

        await downgrade(engine, settings, "base")
        tables, _ = await _snapshot(engine)
        assert tables == set()

        await upgrade(engine, settings)
        tables, differences = await _snapshot(engine)
        assert tables == set(metadata.tables)
        assert differences == []
    finally:
        await engine.dispose()


async def test_prices_have_the_indexes_keyset_pages_need(engine: AsyncEngine) -> None:
    def indexes(connection: Connection) -> dict[str, list[str | None]]:
        inspector = inspect(connection)
        found = {ix["name"]: ix["column_names"] for ix in inspector.get_indexes("prices")}
        for unique in inspector.get_unique_constraints("prices"):
            found[unique["name"]] = unique["column_names"]
        return {str(name): columns for name, columns in found.items()}

    async with engine.connect() as conn:
        found = await conn.run_sync(indexes)
    # By time: all, one asset, one source, one asset from one source (the unique constraint).
    assert ["asset_id", "source", "observed_at"] in found.values()
    assert ["asset_id", "observed_at", "id"] in found.values()
    assert ["source", "observed_at", "id"] in found.values()
    assert ["observed_at", "id"] in found.values()
    # In ingestion order: one asset, one source (all: the primary key).
    assert ["asset_id", "id"] in found.values()
    assert ["source", "id"] in found.values()
    if engine.dialect.name == "postgresql":  # how many prices a pair has: for the planner
        async with engine.connect() as conn:
            names = await conn.scalars(text("SELECT stxname FROM pg_statistic_ext"))
            assert PRICES_PAIR_STATISTICS in names.all()


async def test_the_model_schema_has_every_table_of_the_design() -> None:
    assert set(metadata.tables) == {
        "assets",
        "asset_aliases",
        "raw_records",
        "prices",
        "etl_runs",
        "checkpoints",
        "quarantine",
        "drift_events",
        "anomalies",
        "alert_state",
        "candles_minute",
        "candles_hour",
        "candles_day",
    }
