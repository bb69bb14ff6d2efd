"""Revision 20261206_0006: aliases recorded before it get a confidence and evidence from their
resolution; going back folds the resolutions the older schema did not know into its own."""

from __future__ import annotations

from sqlalchemy import text

from server.db import create_engine
from server.migrate import downgrade, upgrade
from server.settings import Settings

BEFORE, REVISION = "0005", "20261206_0006"


async def test_old_aliases_get_a_confidence_and_new_resolutions_fold_back(db_url: str) -> None:
    settings = Settings.load(_env_file=None, DATABASE_URL=db_url)
    engine = create_engine(settings)
    try:
        await upgrade(engine, settings, BEFORE)
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO assets (id, slug, symbol, name) VALUES (1, 'bitcoin', 'BTC', 'B')"
                )
            )
            for number, resolution, pinned in (
                (1, "created", False),
                (2, "exact", False),
                (3, "ambiguous", False),
                (4, "pinned", True),
            ):
                await conn.execute(
                    text(
                        "INSERT INTO asset_aliases (source, source_asset_id, asset_id, resolution,"
                        " pinned) VALUES ('s', :id, 1, :resolution, :pinned)"
                    ),
                    {"id": f"coin-{number}", "resolution": resolution, "pinned": pinned},
                )

        await upgrade(engine, settings, REVISION)
        async with engine.begin() as conn:
            rows = (
                await conn.execute(
                    text("SELECT resolution, confidence, evidence FROM asset_aliases ORDER BY id")
                )
            ).all()
            assert [(r.resolution, r.confidence) for r in rows] == [
                ("created", 1.0),
                ("exact", 1.0),
                ("ambiguous", 0.5),
                ("pinned", 1.0),
            ]
            assert all(r.evidence for r in rows)
            await conn.execute(
                text(
                    "UPDATE asset_aliases SET resolution = 'market-agreement', confidence = 0.7"
                    " WHERE source_asset_id = 'coin-2'"
                )
            )

        await downgrade(engine, settings, BEFORE)
        async with engine.connect() as conn:
            folded = (
                await conn.execute(text("SELECT resolution FROM asset_aliases ORDER BY id"))
            ).scalars()
            assert list(folded) == ["created", "exact", "ambiguous", "pinned"]
    finally:
        await engine.dispose()
