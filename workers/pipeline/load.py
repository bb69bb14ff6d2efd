"""Writing one batch: raw items, identity, price upserts, quarantine and checkpoint together.

Everything here runs inside the caller's transaction, so a crash at any instant leaves either
the whole batch with its checkpoint or none of it.

A batch is stored under its own source when it names one (`Batch.source`: a CSV file's dataset,
"csv:yahoo"), else under the run's: raw items, prices, quarantine, drift, anomalies and its
checkpoint alike. Coins are resolved under the run's source (the alias family): the coin a CSV
file names is the same coin whatever its dataset.

On PostgreSQL the bulk writes go through asyncpg on the transaction's own connection: prices are
COPYed into a per-connection staging table and merged with one INSERT ... SELECT ... ON CONFLICT,
and quarantined rows are COPYed. SQLite keeps SQLAlchemy's multi-row INSERT ... ON CONFLICT.
The batch's drift findings, and the anomalies among the prices it wrote, are recorded with it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import groupby
from json.encoder import encode_basestring_ascii as _quote
from operator import itemgetter
from typing import Any

from sqlalchemy import Text, bindparam, cast, func, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection

from server.source_names import stored_under
from server.tables import checkpoints, etl_runs, prices, quarantine, raw_records
from workers.pipeline.identity import CoinRef, IdentityResolver, Resolved
from workers.quality.anomalies import AnomalyRules
from workers.quality.price_anomalies import Survey, WrittenPrice, check_prices, survey_prices
from workers.quality.store import record_drift
from workers.sources.base import Batch, PriceRecord, SourceItem, checkpoint_key

# All price writers serialize on this lock so ids are handed out in commit order: a cursor
# (the price id) that a subscriber has seen is never followed by a smaller one committing late.
PRICE_WRITE_LOCK = 0x6B617370  # "kasp"
_COMPARED = ("price_usd", "market_cap_usd", "volume_24h_usd", "open_usd", "high_usd", "low_usd")

# SQLite: (asset_id, observed_at) -> (asset_id, index in `parsed`): the later item of a batch
# wins, at the place of the first.
Latest = dict[tuple[int, datetime], tuple[int, int]]
Written = list[tuple[int, int, datetime]]  # id, asset_id, observed_at of inserted/updated rows
# PostgreSQL staging rows: ord, source_asset_id, observed_at, the six numbers as text, extra,
# origin; and where each key's row is.
Row = tuple[Any, ...]
Positions = dict[tuple[Any, datetime], int]

# PostgreSQL: the session's staging table (emptied at every commit), and the one statement that
# merges it into prices. Numbers travel as their exact text (cheaper than asyncpg's binary
# numeric encoding); coins as the source's ids, mapped to asset ids by the $5/$6 arrays.
_STAGE = "kasparro_price_stage"
_STAGE_COLUMNS = ("ord", "source_asset_id", "observed_at", *_COMPARED, "extra", "origin")
_CREATE_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS kasparro_price_stage (
    ord integer NOT NULL, source_asset_id text NOT NULL, observed_at timestamptz NOT NULL,
    price_usd text NOT NULL, market_cap_usd text, volume_24h_usd text, open_usd text,
    high_usd text, low_usd text, extra text, origin text
) ON COMMIT DELETE ROWS
"""
_MERGE = """
INSERT INTO prices AS p (asset_id, source, observed_at, price_usd, market_cap_usd, volume_24h_usd,
                         open_usd, high_usd, low_usd, extra, run_id, raw_record_id, origin,
                         ingested_at)
SELECT m.asset_id, $1, s.observed_at, s.price_usd::numeric, s.market_cap_usd::numeric,
       s.volume_24h_usd::numeric, s.open_usd::numeric, s.high_usd::numeric, s.low_usd::numeric,
       s.extra::jsonb, $2, $3, s.origin, $4
FROM kasparro_price_stage AS s
JOIN unnest($5::text[], $6::integer[]) AS m (source_asset_id, asset_id) USING (source_asset_id)
ORDER BY s.ord
ON CONFLICT (asset_id, source, observed_at) DO UPDATE SET
    price_usd = excluded.price_usd, market_cap_usd = excluded.market_cap_usd,
    volume_24h_usd = excluded.volume_24h_usd, open_usd = excluded.open_usd,
    high_usd = excluded.high_usd, low_usd = excluded.low_usd, extra = excluded.extra,
    run_id = excluded.run_id, raw_record_id = excluded.raw_record_id, origin = excluded.origin,
    updated_at = $4
WHERE (p.price_usd, p.market_cap_usd, p.volume_24h_usd, p.open_usd, p.high_usd, p.low_usd)
      IS DISTINCT FROM (excluded.price_usd, excluded.market_cap_usd, excluded.volume_24h_usd,
                        excluded.open_usd, excluded.high_usd, excluded.low_usd)
RETURNING p.id, p.asset_id, p.observed_at
"""
# Raw payloads are large JSON documents, written once and seldom read: lz4 (PostgreSQL 14+, when
# the server has it) compresses them about twice as fast as the default pglz. For this
# transaction only; setting the column's compression in a migration would make this unneeded.
_RAW_COMPRESSION = (
    "SELECT set_config('default_toast_compression', 'lz4', true) FROM pg_settings"
    " WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)"
)
_QUARANTINE_COLUMNS = (
    "run_id", "source", "raw_record_id", "origin", "reason", "payload", "created_at",
)  # fmt: skip


@dataclass(slots=True)
class BatchOutcome:
    fetched: int = 0
    inserted: int = 0
    updated: int = 0
    skipped: int = 0
    quarantined: int = 0
    new_prices: list[dict[str, Any]] = field(default_factory=list)
    # Rows whose values changed in place: caches of latest values re-read them.
    updated_ids: list[int] = field(default_factory=list)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def content_hash(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Serialized:
    """What writing a batch needs that costs Python time but no database: the runner makes it in
    a worker thread while the previous batch is being written."""

    raw_json: str  # canonical JSON of the items' payloads (stored on PostgreSQL as it is)
    raw_hash: str  # its sha256
    count: int  # parsed records
    coins: list[CoinRef]  # their distinct coins, first seen first
    # PostgreSQL: the staging rows, one per (source_asset_id, observed_at), where each key's row
    # is, and the index of the record each row holds (the key's last).
    positions: Positions | None
    rows: list[Row] | None
    last: list[int] | None


class Serializer:
    """Builds a batch's `Serialized` from its items in order, a chunk at a time (so that the
    thread doing it can let the event loop run between chunks)."""

    def __init__(self, *, source: str, postgres: bool) -> None:
        self.source = source
        self._json: list[str] = []
        self._count = 0
        self._coins: dict[str, CoinRef] = {}
        self._positions: Positions | None = {} if postgres else None
        self._rows: list[Row] = []
        self._last: list[int] = []

    def add(self, items: list[SourceItem], parsed: list[tuple[SourceItem, PriceRecord]]) -> None:
        """The next `items` of the batch, and those of them that parsed."""
        if items:  # canonical_json of a list, without its brackets: items joined by ","
            payloads = [_as_dict(item.payload) for item in items]
            self._json.append(canonical_json(payloads)[1:-1])
        coins = self._coins
        for _, r in parsed:
            if r.source_asset_id not in coins:
                coins[r.source_asset_id] = CoinRef(
                    self.source,
                    r.source_asset_id,
                    r.symbol,
                    r.name,
                    r.price_usd,  # an observation of the coin, for market agreement
                    r.market_cap_usd,
                    r.observed_at,
                )
        if self._positions is not None:
            _stage_rows(parsed, self._count, self._positions, self._rows, self._last)
        self._count += len(parsed)

    def finish(self) -> Serialized:
        raw_json = f"[{','.join(self._json)}]"
        raw_hash = hashlib.sha256(raw_json.encode()).hexdigest()
        coins = list(self._coins.values())
        if self._positions is None:
            return Serialized(raw_json, raw_hash, self._count, coins, None, None, None)
        return Serialized(
            raw_json, raw_hash, self._count, coins, self._positions, self._rows, self._last
        )


def serialize(
    batch: Batch, parsed: list[tuple[SourceItem, PriceRecord]], *, source: str, postgres: bool
) -> Serialized:
    """The whole batch's `Serialized` at once."""
    serializer = Serializer(source=source, postgres=postgres)
    serializer.add(batch.items, parsed)
    return serializer.finish()


def _as_dict(payload: Mapping[str, Any]) -> dict[str, Any]:
    return payload if type(payload) is dict else dict(payload)  # json serializes dicts only


def _stage_rows(
    parsed: list[tuple[SourceItem, PriceRecord]],
    start: int,
    positions: Positions,
    rows: list[Row],
    last: list[int],
) -> None:
    """One staging row per (source_asset_id, observed_at): the later item of a batch wins, at
    the place of the first. `start` is the index of parsed[0] among the batch's records."""
    for index, (item, r) in enumerate(parsed, start):
        position = positions.setdefault((r.source_asset_id, r.observed_at), len(rows))
        row = (
            position,
            r.source_asset_id,
            r.observed_at,
            str(r.price_usd),
            None if r.market_cap_usd is None else str(r.market_cap_usd),
            None if r.volume_24h_usd is None else str(r.volume_24h_usd),
            None if r.open_usd is None else str(r.open_usd),
            None if r.high_usd is None else str(r.high_usd),
            None if r.low_usd is None else str(r.low_usd),
            _json_object(r.extra) if r.extra else None,
            item.origin[:500],
        )
        if position == len(rows):
            rows.append(row)
            last.append(index)
        else:
            rows[position] = row
            last[position] = index


def _rows_by_asset(
    rows: list[Row], last: list[int], asset_of: dict[str, int]
) -> tuple[Positions, list[Row]]:
    """The staging rows again, one per (asset_id, observed_at), for when several coins are one
    asset: the later record wins, at the place of the first, as if the records had been keyed so."""
    positions: Positions = {}
    chosen: list[int] = []  # per position, the row holding the key's last record
    for index, row in enumerate(rows):
        position = positions.setdefault((asset_of[row[1]], row[2]), len(chosen))
        if position == len(chosen):
            chosen.append(index)
        elif last[index] > last[chosen[position]]:
            chosen[position] = index
    return positions, [(position, *rows[index][1:]) for position, index in enumerate(chosen)]


def _json_object(value: dict[str, Any]) -> str:
    """json.dumps(value), a third of the time for the usual extra: text cells by header."""
    try:
        return "{" + ", ".join([_quote(k) + ": " + _quote(v) for k, v in value.items()]) + "}"
    except TypeError:  # a value that is not a string
        return json.dumps(value)


async def write_batch(
    conn: AsyncConnection,
    *,
    run_id: int,
    source: str,
    batch: Batch,
    parsed: list[tuple[SourceItem, PriceRecord]],
    rejected: list[tuple[SourceItem, str]],
    resolver: IdentityResolver,
    serialized: Serialized | None = None,
    checks: AnomalyRules | None = None,
) -> BatchOutcome:
    """Store the batch; return counts and the newly inserted prices (for publishing).

    `source` is the run's; the batch is stored under `batch.source` when it has one.
    `serialized` is `serialize(batch, parsed, ...)` made beforehand (made here when not given).
    PostgreSQL writes the prices from it alone, so with it `parsed` is read on SQLite only.
    With `checks`, the prices inserted or changed are checked for anomalies.
    """
    postgres = conn.dialect.name == "postgresql"
    if serialized is None or (postgres and serialized.rows is None):
        serialized = serialize(batch, parsed, source=source, postgres=postgres)
    outcome = BatchOutcome(fetched=len(batch.items))
    source = batch.source or source  # from here on: where the batch is stored
    raw_id = await _insert_raw(conn, run_id, source, batch, serialized) if batch.items else None
    if serialized.count:
        identities = await resolver.resolve(conn, serialized.coins)
        survey = None
        if postgres:
            written, survey = await _upsert_postgres(
                conn, outcome, run_id, raw_id, source, serialized, identities, checks
            )
        else:
            written = await _upsert_sqlite(
                conn, outcome, run_id, raw_id, source, parsed, identities
            )
        outcome.new_prices.sort(key=lambda price: int(price["id"]))
        if checks is not None:
            await check_prices(
                conn, run_id=run_id, source=source, written=written, rules=checks, survey=survey
            )
    if batch.drift:
        await record_drift(conn, run_id=run_id, source=source, findings=batch.drift)
    if rejected:
        await _insert_quarantine(conn, run_id, raw_id, source, rejected)
        outcome.quarantined = len(rejected)
    await save_checkpoint(
        conn, source=source, stream=batch.stream, state=batch.checkpoint, run_id=run_id
    )
    await conn.execute(
        update(etl_runs)
        .where(etl_runs.c.id == run_id)
        .values(
            fetched=etl_runs.c.fetched + outcome.fetched,
            inserted=etl_runs.c.inserted + outcome.inserted,
            updated=etl_runs.c.updated + outcome.updated,
            skipped=etl_runs.c.skipped + outcome.skipped,
            quarantined=etl_runs.c.quarantined + outcome.quarantined,
        )
    )
    return outcome


async def _insert_raw(
    conn: AsyncConnection, run_id: int, source: str, batch: Batch, serialized: Serialized
) -> int:
    origins = [item.origin for item in batch.items]
    origin = origins[0] if len(set(origins)) <= 1 else f"{origins[0]} .. {origins[-1]}"
    payload: Any
    if conn.dialect.name == "postgresql":  # the text is stored as it is, not serialized again
        document = f'{{"items":{serialized.raw_json}}}'
        payload = cast(bindparam("payload", document, type_=Text), JSONB)
        await conn.execute(text(_RAW_COMPRESSION))
    else:
        payload = {"items": [dict(item.payload) for item in batch.items]}
    raw_id = await conn.scalar(
        raw_records.insert()
        .values(
            run_id=run_id,
            source=source,
            origin=(origin or batch.stream)[:500],
            content_hash=serialized.raw_hash,
            payload=payload,
        )
        .returning(raw_records.c.id)
    )
    assert raw_id is not None
    return int(raw_id)


async def _upsert_postgres(
    conn: AsyncConnection,
    outcome: BatchOutcome,
    run_id: int,
    raw_id: int | None,
    source: str,
    serialized: Serialized,
    identities: dict[str, Resolved],
    checks: AnomalyRules | None,
) -> tuple[list[WrittenPrice], Survey | None]:
    """COPY the staging rows into the session's staging table, then merge them into prices with
    one statement; the rows the merge inserted become the batch's new-price events. Returns the
    rows inserted or changed, and with `checks` what the anomaly checks need from before the
    merge."""
    assert serialized.positions is not None
    assert serialized.rows is not None
    assert serialized.last is not None
    asset_of = {coin: resolved.asset_id for coin, resolved in identities.items()}
    coin_of = {asset_id: coin for coin, asset_id in asset_of.items()}
    if len(coin_of) == len(asset_of):
        # One coin per asset: the rows made per coin are the rows per asset.
        positions, rows = serialized.positions, serialized.rows

        def key(asset_id: int, observed_at: datetime) -> tuple[Any, datetime]:
            return coin_of[asset_id], observed_at

    else:  # several of the batch's coins are one asset (aliases edited by hand)

        def key(asset_id: int, observed_at: datetime) -> tuple[Any, datetime]:
            return asset_id, observed_at

        positions, rows = _rows_by_asset(serialized.rows, serialized.last, asset_of)
    # The same observation twice in one batch counts once; the later item wins.
    outcome.skipped += serialized.count - len(rows)
    driver = await _asyncpg(conn)
    await driver.execute(_CREATE_STAGE)
    # Staged before the lock: only the merge needs to be serialized with other price writers.
    await driver.copy_records_to_table(_STAGE, columns=_STAGE_COLUMNS, records=rows)
    await driver.execute("SELECT pg_advisory_xact_lock($1)", PRICE_WRITE_LOCK)
    survey = None
    if checks is not None:  # under the lock: what it sees stays true until the merge
        spans = _spans(rows, asset_of)
        survey = await survey_prices(conn, source=source, spans=spans, rules=checks)
    max_before = await driver.fetchval("SELECT coalesce(max(id), 0) FROM prices")
    now = datetime.now(UTC)
    written = await driver.fetch(
        _MERGE, source, run_id, raw_id, now, list(asset_of), list(asset_of.values())
    )
    symbols = {resolved.asset_id: resolved.symbol for resolved in identities.values()}
    updated = 0
    changed: list[WrittenPrice] = []
    for price_id, asset_id, observed_at in written:
        row = rows[positions[key(asset_id, observed_at)]]
        changed.append((price_id, asset_id, observed_at, row[3]))
        if price_id <= max_before:
            updated += 1
            outcome.updated_ids.append(price_id)
            continue
        outcome.new_prices.append(
            {
                "id": price_id,
                "asset_id": asset_id,
                "symbol": symbols[asset_id],
                "source": source,
                "observed_at": row[2].isoformat(),
                "price_usd": row[3],
                "market_cap_usd": row[4],
                "volume_24h_usd": row[5],
            }
        )
    outcome.inserted += len(written) - updated
    outcome.updated += updated
    outcome.skipped += len(rows) - len(written)
    return changed, survey


def _spans(rows: list[Row], asset_of: dict[str, int]) -> dict[int, tuple[datetime, datetime]]:
    """The earliest and latest time of the staging rows, per asset (rows come in runs of one
    coin, in the usual file: one pass of min and max per run)."""
    spans: dict[int, tuple[datetime, datetime]] = {}
    for coin, run in groupby(rows, key=itemgetter(1)):
        times = [row[2] for row in run]
        low, high = min(times), max(times)
        asset_id = asset_of[coin]
        if asset_id in spans:
            known_low, known_high = spans[asset_id]
            low, high = min(low, known_low), max(high, known_high)
        spans[asset_id] = (low, high)
    return spans


async def _upsert_sqlite(
    conn: AsyncConnection,
    outcome: BatchOutcome,
    run_id: int,
    raw_id: int | None,
    source: str,
    parsed: list[tuple[SourceItem, PriceRecord]],
    identities: dict[str, Resolved],
) -> list[WrittenPrice]:
    """Upsert the batch's latest record per (asset, time); returns the rows inserted or
    changed."""
    rows = _latest_by_asset(parsed, identities)
    # The same observation twice in one batch counts once; the later item wins.
    outcome.skipped += len(parsed) - len(rows)
    now = datetime.now(UTC)
    max_before, written = await _merge_sqlite(conn, rows, parsed, run_id, raw_id, source, now)
    symbols = {asset.asset_id: asset.symbol for asset in identities.values()}
    changed: list[WrittenPrice] = []
    for price_id, asset_id, observed_at in written:
        record = parsed[rows[(asset_id, _utc(observed_at))][1]][1]
        changed.append((price_id, asset_id, record.observed_at, record.price_usd))
        if price_id > max_before:
            outcome.inserted += 1
            outcome.new_prices.append(_event(price_id, asset_id, source, record, symbols[asset_id]))
        else:
            outcome.updated += 1
            outcome.updated_ids.append(price_id)
    outcome.skipped += len(rows) - len(written)
    return changed


def _latest_by_asset(
    parsed: list[tuple[SourceItem, PriceRecord]], identities: dict[str, Resolved]
) -> Latest:
    asset_ids = {key: asset.asset_id for key, asset in identities.items()}
    rows: Latest = {}
    for index, (_, record) in enumerate(parsed):
        asset_id = asset_ids[record.source_asset_id]
        rows[(asset_id, record.observed_at)] = (asset_id, index)
    return rows


async def _merge_sqlite(
    conn: AsyncConnection,
    rows: Latest,
    parsed: list[tuple[SourceItem, PriceRecord]],
    run_id: int,
    raw_id: int | None,
    source: str,
    now: datetime,
) -> tuple[int, Written]:
    # SQLite has one writer at a time: the database lock orders the ids.
    max_before = await conn.scalar(select(func.coalesce(func.max(prices.c.id), 0))) or 0
    base = sqlite.insert(prices)
    changed = [
        getattr(prices.c, name).is_distinct_from(getattr(base.excluded, name)) for name in _COMPARED
    ]
    stmt = base.on_conflict_do_update(
        index_elements=["asset_id", "source", "observed_at"],
        set_={
            **{
                name: getattr(base.excluded, name)
                for name in (*_COMPARED, "extra", "run_id", "raw_record_id", "origin")
            },
            "updated_at": now,
        },
        where=or_(*changed),
    ).returning(prices.c.id, prices.c.asset_id, prices.c.observed_at)
    values = []
    for asset_id, index in rows.values():
        item, record = parsed[index]
        values.append(
            {
                "asset_id": asset_id,
                "source": source,
                "observed_at": record.observed_at,
                **{name: getattr(record, name) for name in _COMPARED},
                "extra": record.extra or None,
                "run_id": run_id,
                "raw_record_id": raw_id,
                "origin": item.origin[:500],
                "ingested_at": now,
                "updated_at": None,
            }
        )
    result = await conn.execute(stmt, values)
    return int(max_before), [(row[0], row[1], row[2]) for row in result.all()]


async def _insert_quarantine(
    conn: AsyncConnection,
    run_id: int,
    raw_id: int | None,
    source: str,
    rejected: list[tuple[SourceItem, str]],
) -> None:
    if conn.dialect.name == "postgresql":
        driver, now = await _asyncpg(conn), datetime.now(UTC)
        await driver.copy_records_to_table(
            "quarantine",
            columns=_QUARANTINE_COLUMNS,
            records=[
                (run_id, source, raw_id, item.origin[:500], reason, payload, now)
                for item, reason in rejected
                for payload in [json.dumps(dict(item.payload))]
            ],
        )
        return
    await conn.execute(
        quarantine.insert(),
        [
            {
                "run_id": run_id,
                "source": source,
                "raw_record_id": raw_id,
                "origin": item.origin[:500],
                "reason": reason,
                "payload": dict(item.payload),
            }
            for item, reason in rejected
        ],
    )


async def _asyncpg(conn: AsyncConnection) -> Any:
    """The asyncpg connection under `conn` (for COPY), inside `conn`'s transaction."""
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    if not driver.is_in_transaction():
        # SQLAlchemy's asyncpg adapter sends BEGIN with its first statement: send one, so that
        # nothing written through the driver escapes the batch's transaction.
        await conn.execute(text("SELECT 1"))
    if not driver.is_in_transaction():  # an AUTOCOMMIT connection: the staging table would empty
        raise RuntimeError("a batch must be written inside a transaction")
    return driver


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _event(
    price_id: int, asset_id: int, source: str, record: PriceRecord, symbol: str
) -> dict[str, Any]:
    market_cap, volume = record.market_cap_usd, record.volume_24h_usd
    return {
        "id": price_id,
        "asset_id": asset_id,
        "symbol": symbol,
        "source": source,
        "observed_at": record.observed_at.isoformat(),
        "price_usd": str(record.price_usd),
        "market_cap_usd": None if market_cap is None else str(market_cap),
        "volume_24h_usd": None if volume is None else str(volume),
    }


async def load_checkpoints(conn: AsyncConnection, source: str) -> dict[str, dict[str, Any]]:
    """Checkpoint key -> state for every checkpoint of `source` and of its datasets
    (`Batch.checkpoint_key`: the stream, after the dataset's source for a dataset's)."""
    rows = await conn.execute(
        select(checkpoints.c.source, checkpoints.c.stream, checkpoints.c.state).where(
            stored_under(checkpoints.c.source, [source])
        )
    )
    return {
        checkpoint_key("" if stored == source else stored, stream): dict(state)
        for stored, stream, state in rows
    }


async def save_checkpoint(
    conn: AsyncConnection, *, source: str, stream: str, state: dict[str, Any], run_id: int
) -> None:
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = insert(checkpoints).values(
        source=source, stream=stream, state=state, run_id=run_id, updated_at=datetime.now(UTC)
    )
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["source", "stream"],
            set_={
                "state": stmt.excluded.state,
                "run_id": stmt.excluded.run_id,
                "updated_at": stmt.excluded.updated_at,
            },
        )
    )
