"""Identity resolution: every source's coin id maps to ONE canonical asset.

Rules, in order:
1. An existing alias (source, source_asset_id) wins; pinned aliases are curated overrides.
2. Otherwise the coin joins the asset with the same symbol AND the same normalized name, when
   exactly one such asset exists ("exact").
3. With a name but no symbol, it joins the one asset of that name ("name").
4. Anything else gets its own asset: "created" when nothing matched, "ambiguous" when several
   assets matched or only the symbol did (symbols collide: never merge on symbol alone).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from sqlalchemy import func, or_, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from server.tables import asset_aliases, assets


@dataclass(frozen=True, slots=True)
class CoinRef:
    """What a source says about one coin."""

    source: str
    source_asset_id: str
    symbol: str | None
    name: str | None


@dataclass(frozen=True, slots=True)
class Resolved:
    asset_id: int
    symbol: str
    resolution: str  # existing, exact, name, created, ambiguous


def normalize_name(name: str) -> str:
    """Case, accents, punctuation and a trailing "(SYM)" do not make another coin."""
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    text = re.sub(r"\s*\([^)]*\)\s*$", "", text)
    return re.sub(r"[^a-z0-9]+", "", text.lower())


def slugify(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-") or "asset"


class IdentityResolver:
    """Resolves coins to asset ids within one transaction, caching what it has seen."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], Resolved] = {}
        self.reports: list[tuple[CoinRef, Resolved]] = []  # ambiguous matches, for the run

    async def resolve(self, conn: AsyncConnection, refs: list[CoinRef]) -> dict[str, Resolved]:
        """source_asset_id -> Resolved for every ref (all of one source)."""
        wanted = {(r.source, r.source_asset_id): r for r in refs}
        missing = [key for key in wanted if key not in self._cache]
        if missing:
            await self._load_aliases(conn, missing)
        for key in missing:
            if key not in self._cache:
                self._cache[key] = await self._create_alias(conn, wanted[key])
        return {key[1]: self._cache[key] for key in wanted}

    def forget(self) -> None:
        """Drop the cache (after a rolled-back transaction the ids may not exist)."""
        self._cache.clear()

    async def _load_aliases(self, conn: AsyncConnection, keys: list[tuple[str, str]]) -> None:
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            rows = await conn.execute(
                select(
                    asset_aliases.c.source,
                    asset_aliases.c.source_asset_id,
                    assets.c.id,
                    assets.c.symbol,
                )
                .join(assets, assets.c.id == asset_aliases.c.asset_id)
                .where(tuple_(asset_aliases.c.source, asset_aliases.c.source_asset_id).in_(chunk))
            )
            for source, source_asset_id, asset_id, symbol in rows:
                self._cache[(source, source_asset_id)] = Resolved(asset_id, symbol, "existing")

    async def _create_alias(self, conn: AsyncConnection, ref: CoinRef) -> Resolved:
        resolved = await self._match(conn, ref)
        if resolved is None:
            ambiguous = await self._has_symbol_or_name_match(conn, ref)
            resolved = await self.new_asset(conn, ref, "ambiguous" if ambiguous else "created")
        stmt = (
            _insert(conn)(asset_aliases)
            .values(
                source=ref.source,
                source_asset_id=ref.source_asset_id,
                asset_id=resolved.asset_id,
                symbol=ref.symbol,
                name=ref.name,
                resolution=resolved.resolution,
            )
            .on_conflict_do_nothing(index_elements=["source", "source_asset_id"])
        )
        await conn.execute(stmt)
        # A concurrent run may have created the alias first: its mapping is the one that holds.
        row = (
            await conn.execute(
                select(assets.c.id, assets.c.symbol)
                .join(asset_aliases, asset_aliases.c.asset_id == assets.c.id)
                .where(
                    asset_aliases.c.source == ref.source,
                    asset_aliases.c.source_asset_id == ref.source_asset_id,
                )
            )
        ).one()
        final = Resolved(row.id, row.symbol, resolved.resolution)
        if final.resolution == "ambiguous":
            self.reports.append((ref, final))
        return final

    async def _match(self, conn: AsyncConnection, ref: CoinRef) -> Resolved | None:
        if not ref.name:
            return None
        candidates = await self._assets_named(conn, ref.name)
        if ref.symbol:
            symbol = ref.symbol.upper()
            candidates = [c for c in candidates if c[1].upper() == symbol]
            kind = "exact"
        else:
            kind = "name"
        if len(candidates) != 1:
            return None
        asset_id, symbol_of_asset = candidates[0]
        # The asset already stands for another coin of this same source: two coins alike.
        taken = await conn.scalar(
            select(asset_aliases.c.id)
            .where(
                asset_aliases.c.asset_id == asset_id,
                asset_aliases.c.source == ref.source,
                asset_aliases.c.source_asset_id != ref.source_asset_id,
            )
            .limit(1)
        )
        return None if taken is not None else Resolved(asset_id, symbol_of_asset, kind)

    async def _assets_named(self, conn: AsyncConnection, name: str) -> list[tuple[int, str]]:
        key = normalize_name(name)
        if not key:
            return []
        # The name column is indexed; compare normalized forms in Python on the few hits.
        rows = await conn.execute(
            select(assets.c.id, assets.c.symbol, assets.c.name).where(
                or_(
                    func.lower(assets.c.name) == name.strip().lower(),
                    assets.c.slug == slugify(name),
                    assets.c.slug.like(f"{slugify(name)}-%"),
                )
            )
        )
        return [(r.id, r.symbol) for r in rows if normalize_name(r.name) == key]

    async def _has_symbol_or_name_match(self, conn: AsyncConnection, ref: CoinRef) -> bool:
        conditions = []
        if ref.symbol:
            conditions.append(func.upper(assets.c.symbol) == ref.symbol.upper())
        if ref.name:
            conditions.append(func.lower(assets.c.name) == ref.name.strip().lower())
        if not conditions:
            return False
        found = await conn.scalar(select(assets.c.id).where(or_(*conditions)).limit(1))
        return found is not None

    async def new_asset(self, conn: AsyncConnection, ref: CoinRef, kind: str) -> Resolved:
        """A new asset for `ref` (a unique slug is found for it)."""
        symbol = (ref.symbol or ref.source_asset_id).upper()[:64]
        name = (ref.name or ref.symbol or ref.source_asset_id)[:200]
        base = slugify(ref.name or ref.source_asset_id)
        for slug in _slug_candidates(base, symbol, ref):
            stmt = _insert(conn)(assets).values(slug=slug, symbol=symbol, name=name)
            stmt = stmt.on_conflict_do_nothing(index_elements=["slug"]).returning(assets.c.id)
            asset_id = await conn.scalar(stmt)
            if asset_id is not None:
                return Resolved(asset_id, symbol, kind)
        raise RuntimeError(f"no free slug for {ref}")  # unreachable: the last slug is unique


def _slug_candidates(base: str, symbol: str, ref: CoinRef) -> list[str]:
    return [
        base[:200],
        f"{base}-{slugify(symbol)}"[:200],
        f"{base}-{slugify(ref.source)}-{slugify(ref.source_asset_id)}"[:200],
    ]


def _insert(conn: AsyncConnection):  # type: ignore[no-untyped-def]
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
