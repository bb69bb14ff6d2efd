"""Curated identity overrides: an operator pins a source's coin to an asset, or splits it off.

A pinned alias is never re-resolved by later runs. Moving an alias moves the prices it brought:
an asset holds at most one coin per API source, so (asset, source) identifies those prices. A
file source (`csv`, whose prices are stored per dataset, `csv:<dataset>`) may give one asset
several aliases; its prices move with an alias only when that alias is the family's one alias on
the asset (otherwise which alias brought which price is not known, and they stay).

Overrides take the identity lock (workers.pipeline.identity) first, like runs that create aliases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, delete, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from server.tables import asset_aliases, assets, prices
from workers.pipeline.identity import CoinRef, IdentityResolver, is_file_source, lock_identities

_PINNED = {
    "resolution": "pinned",
    "pinned": True,
    "confidence": 1.0,
    "evidence": '{"curated":true}',
}


class OverrideError(ValueError):
    """The override cannot be applied; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class OverrideResult:
    source: str
    source_asset_id: str
    asset_id: int
    previous_asset_id: int | None
    prices_moved: int


async def find_asset(conn: AsyncConnection, ref: str) -> int:
    """An asset by id, slug or unique symbol."""
    if ref.isdigit():
        found = await conn.scalar(select(assets.c.id).where(assets.c.id == int(ref)))
        if found is not None:
            return int(found)
    found = await conn.scalar(select(assets.c.id).where(assets.c.slug == ref.lower()))
    if found is not None:
        return int(found)
    matches = (
        await conn.execute(
            select(assets.c.id, assets.c.slug).where(func.upper(assets.c.symbol) == ref.upper())
        )
    ).all()
    if len(matches) == 1:
        return int(matches[0].id)
    if matches:
        slugs = ", ".join(row.slug for row in matches)
        raise OverrideError(f"symbol {ref!r} names {len(matches)} assets ({slugs}); use a slug")
    raise OverrideError(f"no asset with id, slug or symbol {ref!r}")


async def pin(
    conn: AsyncConnection, *, source: str, source_asset_id: str, asset_id: int
) -> OverrideResult:
    """Map (source, source_asset_id) to `asset_id` for good, moving its prices along."""
    await lock_identities(conn, exclusive=True)
    current = (
        await conn.execute(
            select(asset_aliases.c.id, asset_aliases.c.asset_id).where(
                asset_aliases.c.source == source, asset_aliases.c.source_asset_id == source_asset_id
            )
        )
    ).one_or_none()
    other = await conn.scalar(
        select(asset_aliases.c.source_asset_id)
        .where(
            asset_aliases.c.asset_id == asset_id,
            asset_aliases.c.source == source,
            asset_aliases.c.source_asset_id != source_asset_id,
        )
        .limit(1)
    )
    if other is not None and not is_file_source(source):
        raise OverrideError(
            f"asset {asset_id} already has {source} coin {other!r}: an asset holds one coin "
            f"per source; split {other!r} off first"
        )
    if current is None:
        await conn.execute(
            asset_aliases.insert().values(
                source=source,
                source_asset_id=source_asset_id,
                asset_id=asset_id,
                **_PINNED,
            )
        )
        return OverrideResult(source, source_asset_id, asset_id, None, 0)
    moved = 0
    if await _sole_alias_of_family(conn, current.id, current.asset_id, source):
        moved = await _move_prices(conn, source, current.asset_id, asset_id)
    await conn.execute(
        update(asset_aliases)
        .where(asset_aliases.c.id == current.id)
        .values(asset_id=asset_id, **_PINNED)
    )
    await _drop_if_orphan(conn, current.asset_id)
    return OverrideResult(source, source_asset_id, asset_id, current.asset_id, moved)


async def split(conn: AsyncConnection, *, source: str, source_asset_id: str) -> OverrideResult:
    """Give (source, source_asset_id) an asset of its own, pinned, with its prices."""
    await lock_identities(conn, exclusive=True)
    alias = (
        await conn.execute(
            select(asset_aliases).where(
                asset_aliases.c.source == source, asset_aliases.c.source_asset_id == source_asset_id
            )
        )
    ).one_or_none()
    if alias is None:
        raise OverrideError(f"no alias {source}/{source_asset_id}: ingest it or pin it first")
    shared = await conn.scalar(
        select(func.count())
        .select_from(asset_aliases)
        .where(asset_aliases.c.asset_id == alias.asset_id)
    )
    if shared == 1:
        await conn.execute(
            update(asset_aliases).where(asset_aliases.c.id == alias.id).values(**_PINNED)
        )
        return OverrideResult(source, source_asset_id, alias.asset_id, alias.asset_id, 0)
    ref = CoinRef(source, source_asset_id, alias.symbol, alias.name)
    new_asset = await IdentityResolver().new_asset(conn, ref, "pinned")
    return await pin(
        conn, source=source, source_asset_id=source_asset_id, asset_id=new_asset.asset_id
    )


def _of_family(column: Any, source: str) -> ColumnElement[bool]:
    """Prices stored under `source`, or under one of its datasets for a file source."""
    if not is_file_source(source):
        return column == source  # type: ignore[no-any-return]
    family = source.partition(":")[0]
    return or_(column == family, column.startswith(f"{family}:", autoescape=True))


async def _sole_alias_of_family(
    conn: AsyncConnection, alias_id: int, asset_id: int, source: str
) -> bool:
    """Whether no other alias of the source's family maps to the asset (then the asset's prices
    of that family are the alias's)."""
    other = await conn.scalar(
        select(asset_aliases.c.id)
        .where(
            asset_aliases.c.asset_id == asset_id,
            asset_aliases.c.id != alias_id,
            _of_family(asset_aliases.c.source, source),
        )
        .limit(1)
    )
    return other is None


async def _move_prices(conn: AsyncConnection, source: str, from_asset: int, to_asset: int) -> int:
    if from_asset == to_asset:
        return 0
    target = prices.alias("target")
    clash = await conn.scalar(
        select(
            exists().where(
                prices.c.asset_id == from_asset,
                _of_family(prices.c.source, source),
                target.c.asset_id == to_asset,
                target.c.source == prices.c.source,
                target.c.observed_at == prices.c.observed_at,
            )
        )
    )
    if clash:
        raise OverrideError(
            f"asset {to_asset} already has {source} prices at the same times as asset "
            f"{from_asset}; they cannot be merged"
        )
    result = await conn.execute(
        update(prices)
        .where(prices.c.asset_id == from_asset, _of_family(prices.c.source, source))
        .values(asset_id=to_asset)
    )
    return int(result.rowcount or 0)


async def _drop_if_orphan(conn: AsyncConnection, asset_id: int) -> None:
    """An asset left with no alias and no price existed only for that alias."""
    has_alias = exists().where(asset_aliases.c.asset_id == asset_id)
    has_price = exists().where(prices.c.asset_id == asset_id)
    await conn.execute(delete(assets).where(assets.c.id == asset_id, ~has_alias, ~has_price))
