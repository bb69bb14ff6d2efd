"""Price-level anomalies of a batch's written prices, checked in the batch's transaction.

- price_jump: a price `AnomalyRules.price_jump` times its previous observation (same asset and
  source, the latest before it) or less than 1/that.
- price_divergence: a price `AnomalyRules.divergence` times the median of the other sources'
  observations of the asset within `window_s` of it, or less than 1/that.

Only rows the batch inserted or changed are checked (re-ingesting the same data finds nothing
twice). The score is how many times apart the two prices are. The price is stored regardless.

On PostgreSQL, before the batch's prices are merged, `survey_prices` asks a few index probes per
asset of the batch: whether the source already has prices within the batch's span of times, its
previous observation before the span, and whether other sources have prices within the window of
it. Where the span held nothing (a backfill, a new observation), the asset's series there is the
batch's own rows: Python judges the jumps, and the divergence statement runs only for assets that
other sources have prices for (about 1 µs a row on a 5,000-row CSV batch instead of 5). Where
stored rows lie among the batch's, one statement finds and inserts both kinds: the previous
observations come from one ordered range scan of the (asset_id, source, observed_at) index per
asset, written so that stale statistics after a bulk load cannot turn it into a scan of the whole
source. On SQLite, two set-based queries fetch what is needed and Python judges.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, ROUND_HALF_UP, Context, Decimal, localcontext
from operator import itemgetter
from statistics import median
from typing import Any

import structlog
from sqlalchemy import Boolean, Integer, String, bindparam, column, text
from sqlalchemy.ext.asyncio import AsyncConnection

from server.sqltypes import ExactDecimal, UTCDateTime
from server.tables import anomalies
from workers.quality.anomalies import AnomalyRules

log = structlog.get_logger(__name__)

# A written price: its id, asset id, observed_at and price (a Decimal, or its exact text).
WrittenPrice = tuple[int, int, datetime, Decimal | str]

_EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)
_SCORE = Decimal("0.000001")

_POSTGRES_CHECK = """
WITH batch AS MATERIALIZED (
    SELECT b.price_id, b.asset_id, b.observed_at, b.price_usd::numeric AS price_usd
    FROM unnest(CAST(:ids AS bigint[]), CAST(:assets AS integer[]),
                CAST(:times AS timestamptz[]), CAST(:prices AS text[]))
         AS b (price_id, asset_id, observed_at, price_usd)
),
bounds AS MATERIALIZED (
    SELECT asset_id, min(observed_at) AS lo, max(observed_at) AS hi FROM batch GROUP BY asset_id
),
span AS MATERIALIZED (
    SELECT bounds.asset_id, bounds.hi,
           -- Row comparisons ordered like the (asset_id, source, observed_at) index: only it
           -- answers without a sort, whatever the statistics say after a bulk load.
           coalesce((SELECT q.observed_at FROM prices AS q
                     WHERE (q.asset_id, q.source, q.observed_at)
                               < (bounds.asset_id, :source, bounds.lo)
                       AND (q.asset_id, q.source) >= (bounds.asset_id, :source)
                     ORDER BY q.asset_id DESC, q.source DESC, q.observed_at DESC
                     LIMIT 1), bounds.lo) AS start,
           EXISTS (SELECT FROM prices AS o
                   WHERE o.asset_id = bounds.asset_id AND o.source <> :source
                     AND o.observed_at BETWEEN bounds.lo - :window * interval '1 second'
                                           AND bounds.hi + :window * interval '1 second')
               AS compared
    FROM bounds
),
series AS (
    -- A range of the (asset_id, source, observed_at) index per asset, read in its order.
    SELECT p.asset_id, p.observed_at,
           lag(p.observed_at) OVER (PARTITION BY p.asset_id ORDER BY p.observed_at)
               AS previous_at
    FROM span CROSS JOIN LATERAL (
        SELECT q.asset_id, q.observed_at FROM prices AS q
        WHERE (q.asset_id, q.source, q.observed_at) >= (span.asset_id, :source, span.start)
          AND (q.asset_id, q.source, q.observed_at) <= (span.asset_id, :source, span.hi)
          AND q.observed_at BETWEEN span.start AND span.hi
        ORDER BY q.asset_id, q.source, q.observed_at
        OFFSET 0  -- one scan per asset, not flattened into a join
    ) AS p
),
paired AS (
    SELECT b.price_id, b.asset_id, b.observed_at, b.price_usd, s.previous_at,
           prior.price_usd AS prior_price
    FROM batch AS b
    JOIN series AS s ON s.asset_id = b.asset_id AND s.observed_at = b.observed_at
    LEFT JOIN batch AS prior ON prior.asset_id = b.asset_id AND prior.observed_at = s.previous_at
    WHERE s.previous_at IS NOT NULL
),
previous AS (
    -- The previous observation's price: in the batch, or else looked up (one row per asset
    -- at most, unless the batch falls between stored rows).
    SELECT p.*, coalesce(p.prior_price, (
               SELECT q.price_usd FROM prices AS q
               WHERE q.asset_id = p.asset_id AND q.source = :source
                 AND q.observed_at = p.previous_at)) AS previous
    FROM paired AS p
),
jumps AS (
    SELECT 'price_jump'::text AS kind, p.price_id, p.asset_id, p.observed_at, p.price_usd,
           p.previous AS expected,
           jsonb_build_object('previous_observed_at', p.previous_at, 'factor', :jump) AS detail
    FROM previous AS p
    WHERE p.previous > 0
      AND (p.price_usd >= p.previous * :jump OR p.price_usd * :jump <= p.previous)
),
medians AS (
    SELECT b.price_id, m.median, m.observations, m.sources
    FROM batch AS b JOIN span ON span.asset_id = b.asset_id AND span.compared
    CROSS JOIN LATERAL (
        SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY o.price_usd)::numeric AS median,
               count(*) AS observations, array_agg(DISTINCT o.source) AS sources
        FROM prices AS o
        WHERE o.asset_id = b.asset_id AND o.source <> :source
          AND o.observed_at BETWEEN b.observed_at - :window * interval '1 second'
                                AND b.observed_at + :window * interval '1 second'
    ) AS m
    WHERE m.observations > 0
),
divergent AS (
    SELECT 'price_divergence'::text, b.price_id, b.asset_id, b.observed_at, b.price_usd,
           m.median,
           jsonb_build_object('sources', m.sources, 'observations', m.observations,
                              'window_s', :window, 'factor', :divergence)
    FROM batch AS b JOIN medians AS m USING (price_id)
    WHERE m.median > 0
      AND (b.price_usd >= m.median * :divergence OR b.price_usd * :divergence <= m.median)
),
found AS (SELECT * FROM jumps UNION ALL SELECT * FROM divergent)
INSERT INTO anomalies (kind, run_id, source, asset_id, price_id, observed_at, value, expected,
                       score, detail, detected_at)
SELECT kind, :run_id, :source, asset_id, price_id, observed_at, price_usd, expected,
       CASE WHEN price_usd > 0
            THEN round(greatest(price_usd / expected, expected / price_usd), 6)::float8 END,
       detail, :now
FROM found
RETURNING kind
"""
# Only the divergence part of _POSTGRES_CHECK, for prices whose assets the survey found compared.
_POSTGRES_DIVERGENCE = """
WITH batch AS MATERIALIZED (
    SELECT b.price_id, b.asset_id, b.observed_at, b.price_usd::numeric AS price_usd
    FROM unnest(CAST(:ids AS bigint[]), CAST(:assets AS integer[]),
                CAST(:times AS timestamptz[]), CAST(:prices AS text[]))
         AS b (price_id, asset_id, observed_at, price_usd)
),
medians AS (
    SELECT b.price_id, m.median, m.observations, m.sources
    FROM batch AS b
    CROSS JOIN LATERAL (
        SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY o.price_usd)::numeric AS median,
               count(*) AS observations, array_agg(DISTINCT o.source) AS sources
        FROM prices AS o
        WHERE o.asset_id = b.asset_id AND o.source <> :source
          AND o.observed_at BETWEEN b.observed_at - :window * interval '1 second'
                                AND b.observed_at + :window * interval '1 second'
    ) AS m
    WHERE m.observations > 0
)
INSERT INTO anomalies (kind, run_id, source, asset_id, price_id, observed_at, value, expected,
                       score, detail, detected_at)
SELECT 'price_divergence', :run_id, :source, b.asset_id, b.price_id, b.observed_at,
       b.price_usd, m.median,
       CASE WHEN b.price_usd > 0
            THEN round(greatest(b.price_usd / m.median, m.median / b.price_usd), 6)::float8 END,
       jsonb_build_object('sources', m.sources, 'observations', m.observations,
                          'window_s', :window, 'factor', :divergence),
       :now
FROM batch AS b JOIN medians AS m USING (price_id)
WHERE m.median > 0
  AND (b.price_usd >= m.median * :divergence OR b.price_usd * :divergence <= m.median)
RETURNING kind
"""
# Before the batch's prices are merged (the price write lock held), per asset of the batch and
# the span of its times: whether the source has prices within the span already; its previous
# observation before the span; and whether other sources have prices within the window of it.
_POSTGRES_SURVEY = text(
    """
    SELECT s.asset_id,
           coalesce((SELECT q.observed_at FROM prices AS q
                     WHERE (q.asset_id, q.source, q.observed_at) >= (s.asset_id, :source, s.lo)
                       AND (q.asset_id, q.source) <= (s.asset_id, :source)
                     ORDER BY q.asset_id, q.source, q.observed_at
                     LIMIT 1) <= s.hi, false) AS stored,
           before.observed_at AS previous_at, before.price_usd AS previous,
           EXISTS (SELECT FROM prices AS o
                   WHERE o.asset_id = s.asset_id AND o.source <> :source
                     AND o.observed_at BETWEEN s.lo - :window * interval '1 second'
                                           AND s.hi + :window * interval '1 second')
               AS compared
    FROM unnest(CAST(:assets AS integer[]), CAST(:lows AS timestamptz[]),
                CAST(:highs AS timestamptz[])) AS s (asset_id, lo, hi)
    LEFT JOIN LATERAL (
        -- Both probes in the order of the (asset_id, source, observed_at) index: see above.
        SELECT q.observed_at, q.price_usd FROM prices AS q
        WHERE (q.asset_id, q.source, q.observed_at) < (s.asset_id, :source, s.lo)
          AND (q.asset_id, q.source) >= (s.asset_id, :source)
        ORDER BY q.asset_id DESC, q.source DESC, q.observed_at DESC
        LIMIT 1
    ) AS before ON true
    """
).columns(
    column("asset_id", Integer),
    column("stored", Boolean),
    column("previous_at", UTCDateTime()),
    column("previous", ExactDecimal()),
    column("compared", Boolean),
)

# SQLite keeps times as naive UTC text in this format (SQLAlchemy's storage format for it).
_SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"
_SQLITE_PREVIOUS = text(
    """
    WITH batch AS (
        SELECT json_extract(value, '$[0]') AS price_id, json_extract(value, '$[1]') AS asset_id,
               json_extract(value, '$[2]') AS observed_at
        FROM json_each(:batch)
    )
    SELECT b.price_id,
           (SELECT q.price_usd FROM prices AS q
            WHERE q.asset_id = b.asset_id AND q.source = :source AND q.observed_at < b.observed_at
            ORDER BY q.observed_at DESC LIMIT 1) AS previous,
           (SELECT max(q.observed_at) FROM prices AS q
            WHERE q.asset_id = b.asset_id AND q.source = :source
              AND q.observed_at < b.observed_at) AS previous_at
    FROM batch AS b
    """
).columns(
    column("price_id", Integer),
    column("previous", ExactDecimal()),
    column("previous_at", UTCDateTime()),
)
_SQLITE_OTHERS = text(
    """
    WITH batch AS (
        SELECT json_extract(value, '$[0]') AS price_id, json_extract(value, '$[1]') AS asset_id,
               json_extract(value, '$[3]') AS low, json_extract(value, '$[4]') AS high
        FROM json_each(:batch)
    )
    SELECT b.price_id, o.source, o.price_usd
    FROM batch AS b JOIN prices AS o ON o.asset_id = b.asset_id AND o.source <> :source
        AND o.observed_at BETWEEN b.low AND b.high
    """
).columns(
    column("price_id", Integer), column("source", String), column("price_usd", ExactDecimal())
)


@dataclass(frozen=True, slots=True)
class Survey:
    """What `survey_prices` found before a batch's prices were merged (PostgreSQL)."""

    # Assets the source had no price for within the batch's span: their previous observation
    # before it (time and price), or None. The batch's rows are then the whole series there.
    previous: dict[int, tuple[datetime, Decimal] | None]
    # Assets other sources have prices for within `window_s` of the batch's span.
    compared: frozenset[int]


async def survey_prices(
    conn: AsyncConnection,
    *,
    source: str,
    spans: Mapping[int, tuple[datetime, datetime]],
    rules: AnomalyRules,
) -> Survey:
    """Survey, before a batch's prices are merged, the stored prices that `check_prices` will
    compare them with; `spans` holds the earliest and latest time of the batch per asset.

    A few index probes per asset instead of a scan of the batch's rows once stored. The caller
    holds the price write lock, so nothing else commits prices until the batch does."""
    previous: dict[int, tuple[datetime, Decimal] | None] = {}
    compared: set[int] = set()
    if spans:
        statement = _POSTGRES_SURVEY.bindparams(bindparam("window", type_=ExactDecimal()))
        params = {
            "assets": list(spans),
            "lows": [low for low, _ in spans.values()],
            "highs": [high for _, high in spans.values()],
            "source": source,
            "window": Decimal(repr(rules.window_s)),
        }
        for row in await conn.execute(statement, params):
            if not row.stored:
                before = None if row.previous_at is None else (row.previous_at, row.previous)
                previous[row.asset_id] = before
            if row.compared:
                compared.add(row.asset_id)
    return Survey(previous, frozenset(compared))


async def check_prices(
    conn: AsyncConnection,
    *,
    run_id: int,
    source: str,
    written: Sequence[WrittenPrice],
    rules: AnomalyRules,
    survey: Survey | None = None,
) -> int:
    """Record the anomalies among `written` (already in prices); return how many.

    `survey` (PostgreSQL): `survey_prices` of the batch's spans, made before the merge."""
    if not written:
        return 0
    if conn.dialect.name != "postgresql":
        kinds = await _check_sqlite(conn, run_id, source, written, rules)
    elif survey is None:
        kinds = await _check_postgres(conn, _POSTGRES_CHECK, run_id, source, written, rules)
    else:
        kinds = await _check_surveyed(conn, run_id, source, written, rules, survey)
    if kinds:
        counts = {kind: kinds.count(kind) for kind in sorted(set(kinds))}
        log.warning("price anomalies", run_id=run_id, source=source, **counts)
    return len(kinds)


async def _check_surveyed(
    conn: AsyncConnection,
    run_id: int,
    source: str,
    written: Sequence[WrittenPrice],
    rules: AnomalyRules,
    survey: Survey,
) -> list[str]:
    """Where the survey found the source's span empty, the asset's series there is its written
    rows: jumps are judged here, and divergence asked of the database only where other sources
    have prices. Elsewhere (stored rows among the batch's) the full statement checks."""
    clear, fallback = survey.previous, []
    series: dict[int, list[WrittenPrice]] = defaultdict(list)
    for row in written:
        if row[1] in clear:
            series[row[1]].append(row)
        else:
            fallback.append(row)
    kinds = []
    if fallback:
        kinds += await _check_postgres(conn, _POSTGRES_CHECK, run_id, source, fallback, rules)
    found = _jumps(series, clear, Decimal(repr(rules.price_jump)))
    if found:
        now = datetime.now(UTC)
        await conn.execute(
            anomalies.insert(),
            [{"run_id": run_id, "source": source, "detected_at": now, **row} for row in found],
        )
        kinds += [str(row["kind"]) for row in found]
    compared = [row for asset in survey.compared & series.keys() for row in series[asset]]
    if compared:
        kinds += await _check_postgres(conn, _POSTGRES_DIVERGENCE, run_id, source, compared, rules)
    return kinds


def _jumps(
    series: Mapping[int, list[WrittenPrice]],
    previous: Mapping[int, tuple[datetime, Decimal] | None],
    jump: Decimal,
) -> list[dict[str, Any]]:
    """The price_jump anomalies of each asset's series (its rows by time, after `previous`)."""
    found = []
    factor = float(jump)
    # Ratios safely inside (1/jump, jump) are not jumps, whatever floats' rounding did; the
    # others are judged in exact decimals.
    low, high = (1 + 1e-9) / factor, factor * (1 - 1e-9)
    for asset_id, rows in series.items():
        rows.sort(key=itemgetter(2))
        before = previous[asset_id]
        before_at: datetime | None = None
        before_price: Decimal | str | None = None
        if before is not None:
            before_at, before_price = before
        before_float = 0.0 if before_price is None else float(before_price)
        for price_id, _, observed_at, price in rows:
            current = float(price)
            if before_price is not None and not (
                before_float > 0 and low < current / before_float < high
            ):
                exact, reference = Decimal(price), Decimal(before_price)
                if reference > 0 and _apart(exact, reference, jump):
                    base = {"price_id": price_id, "asset_id": asset_id, "observed_at": observed_at}
                    detail = {"previous_observed_at": _iso(before_at), "factor": factor}
                    found.append(_anomaly("price_jump", base, exact, reference, detail))
            before_at, before_price, before_float = observed_at, price, current
    return found


async def _check_postgres(
    conn: AsyncConnection,
    statement: str,
    run_id: int,
    source: str,
    written: Sequence[WrittenPrice],
    rules: AnomalyRules,
) -> list[str]:
    # A prepared statement's generic plan cannot see which asset and range it scans, and after
    # a bulk load picks scans that grow with the table: plan each batch's check for its values.
    await conn.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
    numbers = {"jump": rules.price_jump, "divergence": rules.divergence, "window": rules.window_s}
    used = [name for name in numbers if f":{name}" in statement]
    result = await conn.execute(
        text(statement).bindparams(*(bindparam(name, type_=ExactDecimal()) for name in used)),
        {
            "ids": [row[0] for row in written],
            "assets": [row[1] for row in written],
            "times": [row[2] for row in written],
            "prices": [str(row[3]) for row in written],
            "source": source,
            "run_id": run_id,
            "now": datetime.now(UTC),
            **{name: Decimal(repr(numbers[name])) for name in used},
        },
    )
    return [str(kind) for kind in result.scalars()]


async def _check_sqlite(
    conn: AsyncConnection,
    run_id: int,
    source: str,
    written: Sequence[WrittenPrice],
    rules: AnomalyRules,
) -> list[str]:
    window = timedelta(seconds=rules.window_s)
    batch = [
        [
            price_id,
            asset_id,
            _sqlite_time(observed_at),
            _sqlite_time(observed_at - window),
            _sqlite_time(observed_at + window),
        ]
        for price_id, asset_id, observed_at, _ in written
    ]
    params = {"batch": json.dumps(batch), "source": source}
    previous = {
        row.price_id: (row.previous, row.previous_at)
        for row in await conn.execute(_SQLITE_PREVIOUS, params)
    }
    others: dict[int, list[tuple[str, Decimal]]] = defaultdict(list)
    for row in await conn.execute(_SQLITE_OTHERS, params):
        others[row.price_id].append((row.source, row.price_usd))
    rows = []
    jump, divergence = Decimal(repr(rules.price_jump)), Decimal(repr(rules.divergence))
    for price_id, asset_id, observed_at, raw_price in written:
        price = Decimal(raw_price) if isinstance(raw_price, str) else raw_price
        base = {"price_id": price_id, "asset_id": asset_id, "observed_at": observed_at}
        before, before_at = previous.get(price_id, (None, None))
        if before is not None and before > 0 and _apart(price, before, jump):
            detail: dict[str, Any] = {
                "previous_observed_at": _iso(before_at),
                "factor": float(jump),
            }
            rows.append(_anomaly("price_jump", base, price, before, detail))
        seen = others.get(price_id)
        if seen:
            centre = median(value for _, value in seen)
            if centre > 0 and _apart(price, centre, divergence):
                detail = {
                    "sources": sorted({name for name, _ in seen}),
                    "observations": len(seen),
                    "window_s": rules.window_s,
                    "factor": float(divergence),
                }
                rows.append(_anomaly("price_divergence", base, price, centre, detail))
    if rows:
        now = datetime.now(UTC)
        await conn.execute(
            anomalies.insert(),
            [{"run_id": run_id, "source": source, "detected_at": now, **row} for row in rows],
        )
    return [str(row["kind"]) for row in rows]


def _apart(price: Decimal, reference: Decimal, factor: Decimal) -> bool:
    with localcontext(_EXACT):  # as numeric does: the products are not rounded
        return price >= reference * factor or price * factor <= reference


def _anomaly(
    kind: str, base: dict[str, Any], price: Decimal, expected: Decimal, detail: dict[str, Any]
) -> dict[str, Any]:
    score = None
    if price > 0:  # round(..., 6) of numeric: half away from zero
        score = float(max(price / expected, expected / price).quantize(_SCORE, ROUND_HALF_UP))
    return {
        "kind": kind,
        **base,
        "value": price,
        "expected": expected,
        "score": score,
        "detail": detail,
    }


def _sqlite_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime(_SQLITE_TIME)


def _iso(value: datetime | None) -> str | None:
    """The time as PostgreSQL writes a timestamptz into JSON (in UTC): no trailing zeros."""
    if value is None:
        return None
    text = value.astimezone(UTC).isoformat()
    if value.microsecond:
        text = text[:26].rstrip("0") + text[26:]
    return text
