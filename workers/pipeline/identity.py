"""Identity resolution: every source's coin maps to ONE canonical asset.

Each alias (source, source_asset_id) is resolved once and recorded with how it was matched
(`resolution`), a `confidence` (0..1) and its `evidence`. For a coin not seen before:

1. Curated overrides win: a pinned alias is never re-resolved, and a coin the operator names for
   a run (`given`: `kasparro ingest csv --file F --asset SLUG`) goes to that asset ("given").
2. A coin with a name (or an id that says more than its symbol) joins the asset whose symbol
   agrees and whose description matches, strongest signal first (workers.pipeline.matching):
   the same name ("exact", 1.0); a source id or slug that spells the other's name or id
   ("source-id", 0.95: CoinPaprika `bnb-binance-coin` = CoinGecko `binancecoin`); the same name
   without a usual suffix ("name", 0.9: "Binance Coin" = "Binance"); a similar name ("fuzzy-name",
   0.7-0.8, unless prices disagree); and, where names disagree but symbols agree, a price (and
   market cap, when both have one) agreeing at the same time ("market-agreement", 0.7).
   Variants ("Wrapped", "Bridged", "Staked", ...) never join on the weak signals. An asset
   holds one coin per API source: two CoinGecko ids are two coins.
   No match: a new asset ("created"); when the symbol already names another coin, the new asset
   is "ambiguous" (kept apart and reported with the run, never guessed).
3. A symbol-only coin (a ticker in a file name, a pair like BTCUSDT, a bare symbol column)
   resolves to the coin the symbol means ("symbol-inferred", < 1): the only asset with that
   symbol, or the one that clearly dominates it (market cap at least ten times any other's, or
   the only one with prices in the last week). A contested symbol gets an asset of its own
   ("ambiguous", reported). With no asset of that symbol yet, a stand-in asset is "created"
   (confidence 0.5): the first named coin with that symbol later adopts it (names it, keeps its
   prices), and a named coin that dominates the symbol absorbs other stand-ins (their aliases and
   prices move to it).

Contract addresses would be the strongest signal, but neither payload the sources read carries
them (CoinGecko lists platforms only in /coins/list?include_platform=true, CoinPaprika in
/contracts): a source that gives them adds them as id keys of its coins.

Concurrency: every run, process and worker resolves under one database lock, never process
memory. On PostgreSQL a transaction-scoped advisory lock: shared to read known aliases, exclusive
to create or move any; taken before anything else the batch locks (PRICE_WRITE_LOCK comes
after), and aliases are read again once it is held. On SQLite the batch's write lock (taken by
its first write) serializes writers already; the exclusive form makes sure it is held.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import delete, exists, func, select, text, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from server.tables import anomalies, asset_aliases, assets, prices
from workers.pipeline.matching import (
    MARKET_WINDOW,
    METHOD_RANK,
    Keys,
    NameMatch,
    Observation,
    compare_market,
    compare_names,
    describe_market,
    id_keys,
    normalize_name,
    slugify,
)

__all__ = [
    "RESOLUTIONS",
    "CoinRef",
    "IdentityError",
    "IdentityResolver",
    "Resolved",
    "lock_identities",
    "normalize_name",
    "slugify",
]

# How an alias was matched: the values of asset_aliases.resolution ("existing" only in memory:
# an alias a run found already recorded).
RESOLUTIONS = (
    "pinned",
    "given",
    "exact",
    "source-id",
    "name",
    "fuzzy-name",
    "market-agreement",
    "symbol-inferred",
    "created",
    "ambiguous",
)
# Source families whose ids are spellings in files, not catalogue ids: several may name one asset.
FILE_FAMILIES = frozenset({"csv"})
# The identity lock, in PostgreSQL's two-key advisory space (apart from single-key locks).
IDENTITY_LOCK = (0x6B617370, 0x69640000)  # "kasp", "id"
# A symbol-only coin infers the dominant asset: market cap this many times any other's ...
DOMINANT_MCAP_FACTOR = 10
# ... or the only asset with a price this recent.
ACTIVE_WITHIN = timedelta(days=7)
_EVIDENCE_LENGTH = 500
_CHUNK = 500


class IdentityError(ValueError):
    """A coin cannot be resolved as asked (e.g. the asset named for a run does not exist)."""


@dataclass(frozen=True, slots=True)
class CoinRef:
    """What a source says about one coin; the observation (price, market cap, time) is one of
    its prices, for market agreement."""

    source: str
    source_asset_id: str
    symbol: str | None
    name: str | None
    price_usd: Decimal | None = None
    market_cap_usd: Decimal | None = None
    observed_at: datetime | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.source, self.source_asset_id)

    @property
    def symbol_only(self) -> bool:
        """A symbol and nothing else: no name, and an id that is the symbol."""
        return (
            bool(self.symbol and self.symbol.strip())
            and not self.name
            and not id_keys(self.source_asset_id, self.symbol)
        )

    def observation(self) -> Observation | None:
        if self.price_usd is None or self.observed_at is None:
            return None
        return Observation(self.observed_at, self.price_usd, self.market_cap_usd, self.source)


@dataclass(frozen=True, slots=True)
class Resolved:
    asset_id: int
    symbol: str
    resolution: str  # "existing" or one of RESOLUTIONS
    confidence: float = 1.0


async def lock_identities(conn: AsyncConnection, *, exclusive: bool) -> None:
    """Take the identity lock until the end of `conn`'s transaction (see the module docstring).
    Take it before any other lock of the transaction."""
    if conn.dialect.name == "postgresql":
        function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        await conn.execute(
            text(f"SELECT {function}(:a, :b)"), {"a": IDENTITY_LOCK[0], "b": IDENTITY_LOCK[1]}
        )
    elif exclusive:  # SQLite: any write takes the database's one write lock
        await conn.execute(text("UPDATE asset_aliases SET id = id WHERE 1 = 0"))


def is_file_source(source: str) -> bool:
    return source.partition(":")[0] in FILE_FAMILIES


class IdentityResolver:
    """Resolves a run's coins to asset ids, batch by batch, inside each batch's transaction.

    Nothing is cached between calls: every batch reads its coins' aliases under the identity
    lock, so an override or a stand-in absorbed meanwhile is seen by the next batch.
    `given`: the slug of the asset every coin of the run is (an operator's statement).
    """

    def __init__(self, *, given: str | None = None) -> None:
        self.given = given
        self.reports: list[tuple[CoinRef, Resolved]] = []  # ambiguous coins, for the run
        # An asset was adopted or absorbed (aliases or prices moved): caches should reload.
        self.rewired = False
        self._last_reports = 0
        # Aliases found recorded by an earlier call: an alias moves but never vanishes, so a
        # batch of only these takes the shared lock at once and reads them once, under it.
        self._recorded: set[tuple[str, str]] = set()

    async def resolve(self, conn: AsyncConnection, refs: Sequence[CoinRef]) -> dict[str, Resolved]:
        """source_asset_id -> Resolved for every ref (all of one source)."""
        wanted: dict[tuple[str, str], CoinRef] = {}
        for ref in refs:
            wanted.setdefault(ref.key, ref)
        self._last_reports = len(self.reports)
        if not wanted:
            return {}
        keys = list(wanted)
        exclusive = False
        if self.given is not None or not self._recorded.issuperset(keys):
            known = await _read_aliases(conn, keys)
            exclusive = self.given is not None or len(known) < len(keys)
        await lock_identities(conn, exclusive=exclusive)
        known = await _read_aliases(conn, keys)  # what holds now that the lock is held
        self._recorded.update(known)
        if self.given is not None:
            await self._give(conn, wanted, known)
        missing = [wanted[key] for key in keys if key not in known]
        if missing:
            if not exclusive:  # gone while waiting (cannot happen: aliases move, never vanish)
                await lock_identities(conn, exclusive=True)
            matcher = _Matcher(conn, self)
            await matcher.load(missing)
            for ref in sorted(missing, key=lambda r: r.symbol_only):  # named coins first
                known[ref.key] = await matcher.resolve(ref)
        return {key[1]: known[key] for key in keys}

    def forget(self) -> None:
        """The last batch rolled back: its reports name aliases that do not exist."""
        del self.reports[self._last_reports :]
        self.rewired = False
        self._recorded.clear()  # some may have been recorded by that transaction

    async def new_asset(self, conn: AsyncConnection, ref: CoinRef, kind: str) -> Resolved:
        """A new asset for `ref` (a unique slug is found for it)."""
        asset_id, symbol, _ = await _new_asset(conn, ref)
        return Resolved(asset_id, symbol, kind)

    async def _give(
        self,
        conn: AsyncConnection,
        wanted: dict[tuple[str, str], CoinRef],
        known: dict[tuple[str, str], Resolved],
    ) -> None:
        slug = (self.given or "").lower()
        row = (await conn.execute(select(assets).where(assets.c.slug == slug))).one_or_none()
        if row is None:
            raise IdentityError(f"no asset with slug {slug!r}")
        for key, ref in wanted.items():
            current = known.get(key)
            if current is not None:
                if current.asset_id != row.id:
                    raise IdentityError(
                        f"{ref.source}/{ref.source_asset_id} already maps to asset "
                        f"{current.asset_id}, not {slug!r}: move it with `kasparro assets pin`"
                    )
                continue
            await _insert_alias(
                conn,
                ref,
                row.id,
                resolution="given",
                confidence=1.0,
                evidence={"given": slug},
                pinned=True,
                symbol=ref.symbol or row.symbol,
                name=ref.name or row.name,
            )
            known[key] = Resolved(row.id, row.symbol, "given")


@dataclass(slots=True)
class _Alias:
    source: str
    source_asset_id: str
    symbol: str | None
    name: str | None
    pinned: bool
    resolution: str

    @property
    def symbol_only(self) -> bool:
        """Known by its symbol alone (and not curated)."""
        return (
            self.name is None
            and not self.pinned
            and self.resolution not in ("given", "pinned")
            and not id_keys(self.source_asset_id, self.symbol)
        )


@dataclass(slots=True)
class _Asset:
    id: int
    slug: str
    symbol: str
    name: str
    aliases: list[_Alias] = field(default_factory=list)
    _keys: Keys | None = None

    @property
    def standin(self) -> bool:
        """Made for symbol-only coins, named by no source: adopted or absorbed by a named one."""
        return bool(self.aliases) and all(alias.symbol_only for alias in self.aliases)

    @property
    def symbols(self) -> set[str]:
        found = {self.symbol.upper()}
        found.update(
            a.symbol.strip().upper() for a in self.aliases if a.symbol and a.symbol.strip()
        )
        return found

    def keys(self) -> Keys:
        if self._keys is None:
            names = [alias.name for alias in self.aliases]
            if not self.standin:
                names.append(self.name)
            ids = [(alias.source_asset_id, alias.symbol) for alias in self.aliases]
            ids.append((self.slug, self.symbol))
            self._keys = Keys.of(symbols=self.symbols, names=names, ids=ids)
        return self._keys

    def add(self, alias: _Alias) -> None:
        self.aliases.append(alias)
        self._keys = None

    def holds_other(self, ref: CoinRef) -> bool:
        """Already an API source's other coin: one asset holds one coin per catalogue."""
        if is_file_source(ref.source):
            return False
        return any(
            a.source == ref.source and a.source_asset_id != ref.source_asset_id
            for a in self.aliases
        )


@dataclass(slots=True)
class _Stats:
    latest_at: datetime | None
    market_cap: Decimal | None


class _Matcher:
    """Resolves the missing coins of one batch, under the exclusive identity lock, against a pool
    of the assets they could be (read once, kept up to date as assets are made)."""

    def __init__(self, conn: AsyncConnection, resolver: IdentityResolver) -> None:
        self.conn = conn
        self.resolver = resolver
        self.pool: dict[int, _Asset] = {}
        self.by_symbol: dict[str, set[int]] = {}
        self.stats: dict[int, _Stats] = {}
        self.now = datetime.now(UTC)

    # --- the pool -------------------------------------------------------------------------

    async def load(self, refs: Sequence[CoinRef]) -> None:
        symbols = {r.symbol.strip().upper() for r in refs if r.symbol and r.symbol.strip()}
        names = {r.name.strip().lower() for r in refs if r.name and r.name.strip()}
        slugs = {slugify(r.name) for r in refs if r.name}
        for ref in refs:
            rest = ref.source_asset_id.partition(":")[2] or ref.source_asset_id
            slugs.add(slugify(rest))
            if ref.symbol and rest.lower().startswith(f"{ref.symbol.lower()}-"):
                slugs.add(slugify(rest[len(ref.symbol) + 1 :]))
        ids: set[int] = set()
        for chunk in _chunks(sorted(symbols)):
            ids.update(
                await self.conn.scalars(select(assets.c.id).where(assets.c.symbol.in_(chunk)))
            )
            spelled = sorted({*chunk, *(s.lower() for s in chunk)})
            ids.update(
                await self.conn.scalars(
                    select(asset_aliases.c.asset_id).where(asset_aliases.c.symbol.in_(spelled))
                )
            )
        for chunk in _chunks(sorted(names)):
            ids.update(
                await self.conn.scalars(
                    select(assets.c.id).where(func.lower(assets.c.name).in_(chunk))
                )
            )
        for chunk in _chunks(sorted(slugs)):
            ids.update(await self.conn.scalars(select(assets.c.id).where(assets.c.slug.in_(chunk))))
        for chunk in _chunks(sorted(ids)):
            rows = await self.conn.execute(select(assets).where(assets.c.id.in_(chunk)))
            for row in rows:
                self._add_asset(_Asset(row.id, row.slug, row.symbol, row.name))
            alias_rows = await self.conn.execute(
                select(asset_aliases).where(asset_aliases.c.asset_id.in_(chunk))
            )
            for row in alias_rows:
                self.pool[row.asset_id].add(
                    _Alias(
                        row.source,
                        row.source_asset_id,
                        row.symbol,
                        row.name,
                        bool(row.pinned),
                        row.resolution,
                    )
                )
        for asset in self.pool.values():
            self._index(asset)

    def _add_asset(self, asset: _Asset) -> None:
        self.pool[asset.id] = asset
        self._index(asset)

    def _index(self, asset: _Asset) -> None:
        for symbol in asset.symbols:
            self.by_symbol.setdefault(symbol, set()).add(asset.id)

    def _with_symbol(self, symbol: str) -> list[_Asset]:
        ids = sorted(self.by_symbol.get(symbol.strip().upper(), ()))
        return [self.pool[i] for i in ids if i in self.pool]

    def _candidates(self, ref: CoinRef) -> list[_Asset]:
        if ref.symbol and ref.symbol.strip():
            found = self._with_symbol(ref.symbol)
        else:
            found = sorted(self.pool.values(), key=lambda a: a.id)
        return [a for a in found if not a.holds_other(ref)]

    # --- resolving --------------------------------------------------------------------------

    async def resolve(self, ref: CoinRef) -> Resolved:
        if ref.symbol_only:
            return await self._symbol_only(ref)
        return await self._named(ref)

    async def _named(self, ref: CoinRef) -> Resolved:
        keys = Keys.of(
            symbols=[ref.symbol], names=[ref.name], ids=[(ref.source_asset_id, ref.symbol)]
        )
        named = [
            a for a in self._candidates(ref) if not a.standin and keys.symbol_compatible(a.keys())
        ]
        scored: list[tuple[_Asset, NameMatch]] = []
        for asset in named:
            found = compare_names(keys, asset.keys())
            if found is not None:
                scored.append((asset, found))
        while scored:
            best = max(METHOD_RANK[m.method] for _, m in scored)
            top = [(a, m) for a, m in scored if METHOD_RANK[m.method] == best]
            market: dict[int, tuple[str | None, str]] = {}
            if len(top) > 1 or top[0][1].method == "fuzzy-name":
                for asset, _ in top:
                    market[asset.id] = await self._market(ref, asset)
            if top[0][1].method == "fuzzy-name":  # a similar name is vetoed by prices apart
                top = [(a, m) for a, m in top if market[a.id][0] != "disagree"]
            if len(top) > 1:
                agreeing = [(a, m) for a, m in top if market[a.id][0] == "agree"]
                if len(agreeing) == 1:
                    top = agreeing
            if len(top) == 1:
                asset, found = top[0]
                signals = [found.detail]
                if market.get(asset.id, (None, ""))[0] == "agree":
                    signals.append(market[asset.id][1])
                return await self._join(ref, asset, found.method, found.confidence, signals)
            if top:
                slugs = ", ".join(sorted(a.slug for a, _ in top))
                return await self._ambiguous(ref, [f"{top[0][1].method} with {slugs}"])
            scored = [(a, m) for a, m in scored if METHOD_RANK[m.method] < best]
        same_symbol = [a for a in named if keys.symbols & a.symbols]
        agreeing_assets: list[tuple[_Asset, str]] = []
        for asset in same_symbol:
            if asset.keys().variants != keys.variants:
                continue
            verdict, detail = await self._market(ref, asset)
            if verdict == "agree":
                agreeing_assets.append((asset, detail))
        if len(agreeing_assets) == 1:
            asset, detail = agreeing_assets[0]
            signals = [
                f"symbol {_symbol(ref)}",
                f"names differ ({ref.name} / {asset.name})",
                detail,
            ]
            return await self._join(ref, asset, "market-agreement", 0.7, signals)
        # Every named coin of the symbol, also those this one cannot join (they hold another
        # coin of its source): the symbol is shared.
        shared = [a for a in self._with_symbol(_symbol(ref)) if not a.standin] if ref.symbol else []
        if shared:
            names = ", ".join(a.slug for a in shared)
            return await self._ambiguous(ref, [f"symbol {_symbol(ref)} also names {names}"])
        return await self._create(ref)

    async def _symbol_only(self, ref: CoinRef) -> Resolved:
        symbol = _symbol(ref)
        candidates = self._candidates(ref)
        named = [a for a in candidates if not a.standin]
        pool = named or candidates
        if pool:
            picked = await self._dominant(pool)
            if picked is not None:
                asset, confidence, why = picked
                if not named:
                    why += " (itself known by symbol only)"
                    confidence = min(confidence, 0.8)
                return await self._join(ref, asset, "symbol-inferred", confidence, [why])
            names = ", ".join(a.slug for a in pool)
            return await self._ambiguous(
                ref, [f"symbol {symbol} names {names}; none dominates"], confidence=0.3
            )
        asset_id, asset_symbol, slug = await _new_asset(self.conn, ref)
        why = f"symbol only: a stand-in for {symbol} until a source names the coin"
        await _insert_alias(
            self.conn, ref, asset_id, resolution="created", confidence=0.5, evidence=[why]
        )
        self._made(asset_id, slug, asset_symbol, ref, "created")
        return Resolved(asset_id, asset_symbol, "created", 0.5)

    async def _dominant(self, pool: list[_Asset]) -> tuple[_Asset, float, str] | None:
        """The asset a bare symbol means among `pool`, with a confidence and why; None when the
        symbol is contested."""
        if len(pool) == 1:
            return pool[0], 0.9, f"the only asset with symbol {pool[0].symbol}"
        stats = {a.id: await self._stats(a.id) for a in pool}
        by_cap = sorted(pool, key=lambda a: stats[a.id].market_cap or 0, reverse=True)
        top, second = (stats[a.id].market_cap or Decimal(0) for a in by_cap[:2])
        if top > 0 and top >= DOMINANT_MCAP_FACTOR * second:
            return (
                by_cap[0],
                0.75,
                (
                    f"market cap {top:.4g} at least {DOMINANT_MCAP_FACTOR}x any other "
                    f"({by_cap[1].slug}: {second:.4g})"
                ),
            )
        since = self.now - ACTIVE_WITHIN
        active = [a for a in pool if (at := stats[a.id].latest_at) is not None and at >= since]
        if len(active) == 1:
            return active[0], 0.7, f"the only one with prices in the last {ACTIVE_WITHIN.days} days"
        return None

    async def _join(
        self,
        ref: CoinRef,
        asset: _Asset,
        method: str,
        confidence: float,
        signals: list[str],
    ) -> Resolved:
        evidence = [*signals, f"asset {asset.slug}"]
        await _insert_alias(
            self.conn, ref, asset.id, resolution=method, confidence=confidence, evidence=evidence
        )
        asset.add(_alias_of(ref, method))
        self._index(asset)
        if not ref.symbol_only:
            await self._absorb_standins(asset, ref)
        return Resolved(asset.id, asset.symbol, method, confidence)

    async def _ambiguous(
        self, ref: CoinRef, signals: list[str], *, confidence: float = 0.5
    ) -> Resolved:
        asset_id, symbol, slug = await _new_asset(self.conn, ref)
        await _insert_alias(
            self.conn,
            ref,
            asset_id,
            resolution="ambiguous",
            confidence=confidence,
            evidence=[*signals, "kept apart: own asset, reported"],
        )
        self._made(asset_id, slug, symbol, ref, "ambiguous")
        resolved = Resolved(asset_id, symbol, "ambiguous", confidence)
        self.resolver.reports.append((ref, resolved))
        if not ref.symbol_only:  # kept apart from the other coins, it may still dominate them
            await self._absorb_standins(self.pool[asset_id], ref)
        return resolved

    async def _create(self, ref: CoinRef) -> Resolved:
        """A new named asset, or the stand-in of its symbol adopted (named and kept)."""
        standins = [a for a in self._candidates(ref) if a.standin] if ref.symbol else []
        if standins:
            adopted = standins[0]
            await self._rename(adopted, ref)
            await _insert_alias(
                self.conn,
                ref,
                adopted.id,
                resolution="created",
                confidence=1.0,
                evidence=[f"named the stand-in asset of symbol {_symbol(ref)}"],
            )
            why = f"the only coin with symbol {_symbol(ref)}: {ref.source}/{ref.source_asset_id}"
            await self._relabel(adopted.id, 0.9, [why, f"asset {adopted.slug}"])
            adopted.add(_alias_of(ref, "created"))
            self.resolver.rewired = True
            await self._absorb_standins(adopted, ref)
            return Resolved(adopted.id, adopted.symbol, "created")
        asset_id, symbol, slug = await _new_asset(self.conn, ref)
        await _insert_alias(
            self.conn, ref, asset_id, resolution="created", confidence=1.0, evidence=["new coin"]
        )
        self._made(asset_id, slug, symbol, ref, "created")
        return Resolved(asset_id, symbol, "created")

    def _made(self, asset_id: int, slug: str, symbol: str, ref: CoinRef, method: str) -> None:
        name = (ref.name or ref.symbol or ref.source_asset_id)[:200]
        asset = _Asset(asset_id, slug, symbol, name, [_alias_of(ref, method)])
        self._add_asset(asset)

    # --- stand-ins --------------------------------------------------------------------------

    async def _absorb_standins(self, target: _Asset, ref: CoinRef) -> None:
        """Stand-ins of the target's symbol move into it when it dominates the symbol."""
        symbol = _symbol(ref) if ref.symbol else target.symbol
        standins = [a for a in self._with_symbol(symbol) if a.standin and a.id != target.id]
        if not standins:
            return
        others = [a for a in self._with_symbol(symbol) if not a.standin and a.id != target.id]
        if others:
            mine = (await self._stats(target.id)).market_cap or Decimal(0)
            mine = max(mine, ref.market_cap_usd or Decimal(0))
            theirs = [(await self._stats(a.id)).market_cap or Decimal(0) for a in others]
            if not (mine > 0 and mine >= DOMINANT_MCAP_FACTOR * max(theirs)):
                return
            why = f"market cap at least {DOMINANT_MCAP_FACTOR}x any other coin with symbol {symbol}"
            confidence = 0.75
        else:
            why = f"the only coin with symbol {symbol}: {ref.source}/{ref.source_asset_id}"
            confidence = 0.9
        for standin in standins:
            await self._absorb(standin, target, confidence, [why, f"moved from {standin.slug}"])

    async def _absorb(
        self, standin: _Asset, target: _Asset, confidence: float, signals: list[str]
    ) -> None:
        """Move a stand-in's aliases, prices and anomalies into `target`, then drop it. Where both
        have a price of one source at one time, the target's stands (the raw record keeps the
        other)."""
        for alias in standin.aliases:
            if not is_file_source(alias.source) and any(
                a.source == alias.source and a.source_asset_id != alias.source_asset_id
                for a in target.aliases
            ):
                return  # one coin per API source: this stand-in is another coin's
        conn, other = self.conn, prices.alias("other")
        same_slot = exists().where(
            other.c.asset_id == target.id,
            other.c.source == prices.c.source,
            other.c.observed_at == prices.c.observed_at,
        )
        await conn.execute(delete(prices).where(prices.c.asset_id == standin.id, same_slot))
        await conn.execute(
            update(prices).where(prices.c.asset_id == standin.id).values(asset_id=target.id)
        )
        await conn.execute(
            update(anomalies).where(anomalies.c.asset_id == standin.id).values(asset_id=target.id)
        )
        await conn.execute(
            update(asset_aliases)
            .where(asset_aliases.c.asset_id == standin.id)
            .values(
                asset_id=target.id,
                resolution="symbol-inferred",
                confidence=confidence,
                evidence=_evidence([*signals, f"asset {target.slug}"]),
            )
        )
        await conn.execute(delete(assets).where(assets.c.id == standin.id))
        for alias in standin.aliases:
            alias.resolution = "symbol-inferred"
            target.add(alias)
        del self.pool[standin.id]
        self._index(target)
        self.stats.pop(target.id, None)
        self.resolver.rewired = True

    async def _rename(self, asset: _Asset, ref: CoinRef) -> None:
        """A stand-in takes the name (and, when free, the slug) of the coin that adopts it."""
        name = (ref.name or asset.name)[:200]
        base = slugify(ref.name) if ref.name else asset.slug
        slug = asset.slug
        for candidate in _slug_candidates(base, asset.symbol, ref):
            if candidate == asset.slug:
                break
            taken = await self.conn.scalar(select(assets.c.id).where(assets.c.slug == candidate))
            if taken is None:
                slug = candidate
                break
        await self.conn.execute(
            update(assets).where(assets.c.id == asset.id).values(name=name, slug=slug)
        )
        asset.name, asset.slug, asset._keys = name, slug, None

    async def _relabel(self, asset_id: int, confidence: float, signals: list[str]) -> None:
        """The symbol-only aliases of an adopted stand-in: now inferred to the named coin."""
        await self.conn.execute(
            update(asset_aliases)
            .where(
                asset_aliases.c.asset_id == asset_id,
                asset_aliases.c.name.is_(None),
                asset_aliases.c.pinned.is_(False),
                asset_aliases.c.resolution.in_(("created", "ambiguous", "symbol-inferred")),
            )
            .values(
                resolution="symbol-inferred", confidence=confidence, evidence=_evidence(signals)
            )
        )
        for alias in self.pool[asset_id].aliases:
            alias.resolution = "symbol-inferred"

    # --- market data ------------------------------------------------------------------------

    async def _market(self, ref: CoinRef, asset: _Asset) -> tuple[str | None, str]:
        """Whether the ref's observation and the asset's nearest one agree, and how."""
        mine = ref.observation()
        if mine is None:
            return None, ""
        window = MARKET_WINDOW
        rows = await self.conn.execute(
            select(
                prices.c.observed_at, prices.c.price_usd, prices.c.market_cap_usd, prices.c.source
            )
            .where(
                prices.c.asset_id == asset.id,
                prices.c.observed_at >= mine.observed_at - window,
                prices.c.observed_at <= mine.observed_at + window,
            )
            .order_by(prices.c.observed_at)
            .limit(50)
        )
        seen = [Observation(r.observed_at, r.price_usd, r.market_cap_usd, r.source) for r in rows]
        if not seen:
            return None, ""
        theirs = min(seen, key=lambda o: abs(o.observed_at - mine.observed_at))
        verdict = compare_market(mine, theirs)
        return verdict, describe_market(mine, theirs)

    async def _stats(self, asset_id: int) -> _Stats:
        found = self.stats.get(asset_id)
        if found is None:
            latest = await self.conn.scalar(
                select(func.max(prices.c.observed_at)).where(prices.c.asset_id == asset_id)
            )
            cap = await self.conn.scalar(
                select(prices.c.market_cap_usd)
                .where(prices.c.asset_id == asset_id, prices.c.market_cap_usd.is_not(None))
                .order_by(prices.c.observed_at.desc())
                .limit(1)
            )
            found = self.stats[asset_id] = _Stats(latest, cap)
        return found


def _symbol(ref: CoinRef) -> str:
    return (ref.symbol or "").strip().upper()


def _alias_of(ref: CoinRef, resolution: str) -> _Alias:
    return _Alias(ref.source, ref.source_asset_id, ref.symbol, ref.name, False, resolution)


def _evidence(signals: Any) -> str:
    """Short JSON text: the signals a match rested on."""
    document = {"signals": signals} if isinstance(signals, list) else signals
    encoded = json.dumps(document, separators=(",", ":"), default=str)
    if len(encoded) <= _EVIDENCE_LENGTH:
        return encoded
    return json.dumps({"signals": [str(document)[: _EVIDENCE_LENGTH - 20]]})[:_EVIDENCE_LENGTH]


async def _read_aliases(
    conn: AsyncConnection, keys: list[tuple[str, str]]
) -> dict[tuple[str, str], Resolved]:
    found: dict[tuple[str, str], Resolved] = {}
    for chunk in _chunks(keys):
        rows = await conn.execute(
            select(
                asset_aliases.c.source,
                asset_aliases.c.source_asset_id,
                assets.c.id,
                assets.c.symbol,
                asset_aliases.c.confidence,
            )
            .join(assets, assets.c.id == asset_aliases.c.asset_id)
            .where(tuple_(asset_aliases.c.source, asset_aliases.c.source_asset_id).in_(chunk))
        )
        for source, source_asset_id, asset_id, symbol, confidence in rows:
            found[(source, source_asset_id)] = Resolved(
                asset_id, symbol, "existing", float(confidence)
            )
    return found


async def _insert_alias(
    conn: AsyncConnection,
    ref: CoinRef,
    asset_id: int,
    *,
    resolution: str,
    confidence: float,
    evidence: Any,
    pinned: bool = False,
    symbol: str | None = None,
    name: str | None = None,
) -> None:
    symbol = symbol or ref.symbol
    name = name or ref.name
    stmt = (
        _insert(conn)(asset_aliases)
        .values(
            source=ref.source,
            source_asset_id=ref.source_asset_id,
            asset_id=asset_id,
            symbol=symbol[:64] if symbol else None,
            name=name[:200] if name else None,
            resolution=resolution,
            confidence=round(confidence, 4),
            evidence=_evidence(evidence),
            pinned=pinned,
        )
        .on_conflict_do_nothing(index_elements=["source", "source_asset_id"])
    )
    await conn.execute(stmt)


async def _new_asset(conn: AsyncConnection, ref: CoinRef) -> tuple[int, str, str]:
    """A new asset for `ref`: its id, symbol and slug (a free slug is found for it)."""
    symbol = (ref.symbol or ref.source_asset_id).strip().upper()[:64]
    name = (ref.name or ref.symbol or ref.source_asset_id)[:200]
    base = slugify(ref.name or ref.source_asset_id)
    for slug in _slug_candidates(base, symbol, ref):
        stmt = _insert(conn)(assets).values(slug=slug, symbol=symbol, name=name)
        stmt = stmt.on_conflict_do_nothing(index_elements=["slug"]).returning(assets.c.id)
        asset_id = await conn.scalar(stmt)
        if asset_id is not None:
            return int(asset_id), symbol, slug
    raise RuntimeError(f"no free slug for {ref}")  # unreachable: the last slug is unique


def _slug_candidates(base: str, symbol: str, ref: CoinRef) -> list[str]:
    return [
        base[:200],
        f"{base}-{slugify(symbol)}"[:200],
        f"{base}-{slugify(ref.source)}-{slugify(ref.source_asset_id)}"[:200],
    ]


def _chunks(items: Sequence[Any] | Iterable[Any]) -> list[list[Any]]:
    values = list(items)
    return [values[i : i + _CHUNK] for i in range(0, len(values), _CHUNK)]


def _insert(conn: AsyncConnection):  # type: ignore[no-untyped-def]
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
