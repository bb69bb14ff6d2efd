"""The candle roll-ups' SQL: the back-fill and the triggers that keep them, on both databases.

Three tables (server/tables.py: candles_minute, candles_hour, candles_day) hold one row per
(asset, bucket, source). A row keeps each picked value (open, close, high, low, volume) with the
time and id of the observation it came from, and how many observations it covers: enough to
merge two rows of one bucket exactly, in any order, the way schema/prices/candles.py orders
observations (open: the earliest by (observed_at, id); close: the latest; high/low: the
highest/lowest, the earliest of equal ones; volume: the latest that reports one).

They are kept by triggers on `prices`, so every writer (the batch load's COPY merge and SQLite
upsert, stand-ins moved by identity resolution, a test's INSERT) updates them in its own
transaction:

- an insert merges the new observations into their minute, hour and day rows (an upsert whose
  update is the merge above: nothing is read back from `prices`);
- an update that changes a value, time, asset or source, or the id (the streams give a grown
  observation a new id, to re-announce it), recomputes the buckets it left and the ones it
  entered: the minute from its prices (one index range each), the hour from its minutes, the day
  from its hours. A correction can lower a high, which no merge could undo; a row keeps the ids
  of its picks, which a renumbering changes.
- a delete leaves them: retention drops old prices and keeps their candles. Prices removed for
  another reason take their roll-ups along only with their asset (the foreign key cascades).

Two transactions writing one bucket: merges commute (the upsert locks the row), but a
recompute replaces the row from what its statement sees, so it relies on what the load path
already does: price writers take the price write lock (workers/pipeline/postgres_copy.py) and
SQLite has one writer.

PostgreSQL runs one statement-level trigger per statement with its transition table (a batch
of thousands of rows costs one aggregate); SQLite, whose triggers are per row, three upserts per
inserted row. Buckets are computed exactly as the candle query computes them: floor of epoch
seconds on PostgreSQL, SQLite's integer division of strftime('%s').

This is the SQL as of revision 20261207_0013, which re-created the triggers of 20261207_0012 to
follow renumbered prices. A later migration that rebuilds `prices` (SQLite's batch mode copies
the table, which drops its triggers) or changes this SQL calls `create_triggers` again.
"""

# Every statement here is built from this module's own names and numbers: no outside value.
# ruff: noqa: S608

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.engine import Connection

MINUTE, HOUR, DAY = 60, 3600, 86400


@dataclass(frozen=True)
class Level:
    table: str
    width: int


LEVELS = (Level("candles_minute", MINUTE), Level("candles_hour", HOUR), Level("candles_day", DAY))

KEY = ("asset_id", "bucket", "source")
PICKED = ("open", "close", "high", "low", "volume")
VALUES = tuple(f"{field}_{part}" for field in PICKED for part in ("usd", "at", "id"))
COLUMNS = (*KEY, *VALUES, "observations")

# The columns of `prices` whose change moves or changes a candle.
WATCHED = (
    "asset_id",
    "source",
    "observed_at",
    "price_usd",
    "open_usd",
    "high_usd",
    "low_usd",
    "volume_24h_usd",
)

_PG_INSERT_FUNCTION = "kasparro_candles_inserted"
_PG_UPDATE_FUNCTION = "kasparro_candles_updated"
_INSERT_TRIGGER = "prices_candles_inserted"
_UPDATE_TRIGGER = "prices_candles_updated"


@dataclass(frozen=True)
class Dialect:
    """What differs between the two databases."""

    name: str

    @property
    def sqlite(self) -> bool:
        return self.name == "sqlite"

    def epoch(self, moment: str) -> str:
        """Whole seconds since the epoch of a `prices.observed_at` expression."""
        if self.sqlite:
            return f"CAST(strftime('%s', {moment}) AS INTEGER)"
        return f"floor(extract(epoch FROM {moment}))::bigint"

    def floor(self, seconds: str, width: int) -> str:
        """The start of the bucket of `width` holding `seconds`, as schema.prices.candles does."""
        if self.sqlite:
            return f"(({seconds}) / {width} * {width})"
        return f"((({seconds}) - (((({seconds}) % {width}) + {width}) % {width})))"

    def magnitude(self, value: str) -> str:
        """How a price compares: SQLite keeps prices as text, so as numbers there."""
        return f"CAST({value} AS REAL)" if self.sqlite else value

    def moment(self, seconds: str) -> str:
        """A time comparable with `prices.observed_at`, from epoch seconds."""
        if self.sqlite:
            return f"datetime({seconds}, 'unixepoch')"
        return f"to_timestamp({seconds})"


def observation(row: str, *, named: bool = True) -> str:
    """The roll-up values of one price row (`row`: an alias, or NEW), without the key; `named`:
    each as its column (in a SELECT list)."""
    at, pid = f"{row}.observed_at", f"{row}.id"
    volume = f"{row}.volume_24h_usd"
    values = [
        f"coalesce({row}.open_usd, {row}.price_usd)",
        at,
        pid,
        f"{row}.price_usd",
        at,
        pid,
        f"coalesce({row}.high_usd, {row}.price_usd)",
        at,
        pid,
        f"coalesce({row}.low_usd, {row}.price_usd)",
        at,
        pid,
        volume,
        f"CASE WHEN {volume} IS NULL THEN NULL ELSE {at} END",
        f"CASE WHEN {volume} IS NULL THEN NULL ELSE {pid} END",
        "1",
    ]
    if named:
        values = [f"{value} AS {name}" for value, name in zip(values, COLUMNS[3:], strict=True)]
    return ", ".join(values)


def _value_names() -> str:
    return ", ".join([*VALUES, "observations"])


def from_prices(dialect: Dialect, width: int, relation: str) -> str:
    """Partial rows, one per price of `relation` (prices or a transition table, as p, with any
    joins), each with the bucket of `width` it falls in: what `combine` takes."""
    bucket = dialect.floor(dialect.epoch("p.observed_at"), width)
    return f"SELECT p.asset_id, {bucket} AS b, p.source, {observation('p')} FROM {relation}"


def from_rollup(dialect: Dialect, width: int, relation: str) -> str:
    """Partial rows from finer roll-up rows of `relation` (as r), each with its bucket of
    `width`."""
    values = ", ".join(f"r.{name}" for name in (*VALUES, "observations"))
    bucket = dialect.floor("r.bucket", width)
    return f"SELECT r.asset_id, {bucket} AS b, r.source, {values} FROM {relation}"


def _order(dialect: Dialect, field: str) -> str:
    at, pid, value = f"{field}_at", f"{field}_id", f"{field}_usd"
    return {
        "open": f"{at}, {pid}",
        "close": f"{at} DESC, {pid} DESC",
        "high": f"{dialect.magnitude(value)} DESC, {at}, {pid}",
        "low": f"{dialect.magnitude(value)}, {at}, {pid}",
        "volume": f"{value} IS NULL, {at} DESC, {pid} DESC",
    }[field]


def combine(dialect: Dialect, partials: str) -> str:
    """One roll-up row per (asset_id, b, source) of the partial rows `partials` yields (the
    columns of `from_prices` / `from_rollup`), each value picked as the candle picks it."""
    picks = []
    for field in PICKED:
        for part in ("usd", "at", "id"):
            picks.append(f"first_value({field}_{part}) OVER w_{field} AS {field}_{part}")
    windows = ", ".join(f"w_{field} AS (w ORDER BY {_order(dialect, field)})" for field in PICKED)
    inner = (
        f"SELECT asset_id, b AS bucket, source, {', '.join(picks)}, "
        "sum(observations) OVER w AS observations, row_number() OVER w_open AS pick "
        f"FROM ({partials}) AS x "
        f"WINDOW w AS (PARTITION BY asset_id, source, b), {windows}"
    )
    return f"SELECT {', '.join(COLUMNS)} FROM ({inner}) AS y WHERE pick = 1"


def _merge_condition(dialect: Dialect, field: str, table: str) -> str:
    """Whether the incoming row's (excluded) pick of `field` wins over the one stored in
    `table`."""
    new = f"(excluded.{field}_at, excluded.{field}_id)"
    old = f"({table}.{field}_at, {table}.{field}_id)"
    new_value = dialect.magnitude(f"excluded.{field}_usd")
    old_value = dialect.magnitude(f"{table}.{field}_usd")
    return {
        "open": f"{new} < {old}",
        "close": f"{new} > {old}",
        "high": f"({new_value} > {old_value} OR ({new_value} = {old_value} AND {new} < {old}))",
        "low": f"({new_value} < {old_value} OR ({new_value} = {old_value} AND {new} < {old}))",
        "volume": (
            f"(excluded.volume_usd IS NOT NULL AND ({table}.volume_usd IS NULL OR {new} > {old}))"
        ),
    }[field]


def merge_set(dialect: Dialect, table: str) -> str:
    """The update of a stored row by an incoming partial one of the same bucket: their merge."""
    sets = []
    for field in PICKED:
        wins = _merge_condition(dialect, field, table)
        for part in ("usd", "at", "id"):
            name = f"{field}_{part}"
            sets.append(f"{name} = CASE WHEN {wins} THEN excluded.{name} ELSE {table}.{name} END")
    sets.append(f"observations = {table}.observations + excluded.observations")
    return ", ".join(sets)


def replace_set() -> str:
    """The update of a stored row by a recomputed one: the recomputed values."""
    return ", ".join(f"{name} = excluded.{name}" for name in (*VALUES, "observations"))


def upsert(table: str, rows: str, update: str) -> str:
    """INSERT the roll-up rows `rows` (a SELECT or VALUES) into `table`, updating on conflict.
    (A SELECT ends in a WHERE, which SQLite needs before ON CONFLICT.)"""
    return (
        f"INSERT INTO {table} ({', '.join(COLUMNS)}) {rows} "
        f"ON CONFLICT ({', '.join(KEY)}) DO UPDATE SET {update}"
    )


# ---- the back-fill ----


def backfill(dialect: Dialect) -> list[str]:
    """Statements that fill empty roll-ups from the stored prices: minutes from prices, hours
    from minutes, days from hours."""
    minute, *coarser = LEVELS
    statements = [
        f"INSERT INTO {minute.table} ({', '.join(COLUMNS)}) "
        + combine(dialect, from_prices(dialect, minute.width, "prices AS p"))
    ]
    finer = minute
    for level in coarser:
        statements.append(
            f"INSERT INTO {level.table} ({', '.join(COLUMNS)}) "
            + combine(dialect, from_rollup(dialect, level.width, f"{finer.table} AS r"))
        )
        finer = level
    return statements


def renamed_picks() -> list[str]:
    """Statements that give each roll-up pick the id its price has now, where the price at
    the pick's (asset, source, time) has another id: what triggers that did not follow a
    renumbering left behind. Only the id can be wrong: a bucket holds one price per time, so
    which price a pick names never depends on ids, and a renumbering changes nothing else.
    Picks whose price is gone (retention keeps the candles of the prices it drops) stay.
    Only the roll-ups of sources that have streamed (a run triggered by "stream") are looked at:
    nothing else renumbers, and a database that never streamed costs nothing."""
    statements = []
    for table in (level.table for level in LEVELS):
        for field in PICKED:
            same = (
                f"p.asset_id = {table}.asset_id AND p.source = {table}.source "
                f"AND p.observed_at = {table}.{field}_at"
            )
            statements.append(
                f"UPDATE {table} SET {field}_id = (SELECT p.id FROM prices AS p WHERE {same}) "
                f"WHERE {table}.source IN ({_STREAMED}) "
                f"AND EXISTS (SELECT 1 FROM prices AS p WHERE {same} "
                f"AND p.id <> {table}.{field}_id)"
            )
    return statements


# The sources whose prices a stream may have renumbered (workers.streams.lease.STREAM_TRIGGER).
_STREAMED = "SELECT DISTINCT source FROM etl_runs WHERE trigger = 'stream'"


# ---- PostgreSQL: statement-level triggers over the transition tables ----


def _pg_inserted(dialect: Dialect) -> str:
    """One statement: the new rows' partial minutes, hours from those, days from those, each
    merged into its table."""
    minute, hour, day = LEVELS

    def merged(level: Level, rows: str) -> str:
        return upsert(level.table, f"SELECT * FROM {rows}", merge_set(dialect, level.table))

    return (
        f"WITH m AS ({combine(dialect, from_prices(dialect, minute.width, 'added AS p'))}), "
        f"h AS ({combine(dialect, from_rollup(dialect, hour.width, 'm AS r'))}), "
        f"d AS ({combine(dialect, from_rollup(dialect, day.width, 'h AS r'))}), "
        f"mm AS ({merged(minute, 'm')}), hh AS ({merged(hour, 'h')}) {merged(day, 'd')}"
    )


def _pg_changed() -> str:
    """The updated rows, as (id, watched columns...), whose id or watched values changed: the
    old ones (the buckets they left) beside the new ones (the buckets they entered). A row
    given a new id (a stream re-announcing a grown observation) is among them: the roll-ups
    name it by its id. The symmetric difference of the two transition tables, so NULLs compare
    equal and no join on an id that may have changed is needed."""
    columns = ", ".join(("id", *WATCHED))
    left = f"SELECT {columns} FROM before_rows EXCEPT SELECT {columns} FROM after_rows"
    entered = f"SELECT {columns} FROM after_rows EXCEPT SELECT {columns} FROM before_rows"
    return f"({left}) UNION ALL ({entered})"


def _pg_touched(dialect: Dialect, width: int) -> str:
    """The buckets of `width` (asset_id, source, bucket) that the updated rows left or entered."""
    bucket = dialect.floor(dialect.epoch("c.observed_at"), width)
    return f"SELECT DISTINCT c.asset_id, c.source, {bucket} AS bucket FROM ({_pg_changed()}) AS c"


def _inside(dialect: Dialect, width: int, finer: Level | None) -> str:
    """Whether a row of the finer level (prices as p, or roll-up rows as r) falls in the
    touched bucket k of `width`: an index range, and on SQLite the exact bucket too (its range
    is a superset: SQLite's division truncates towards zero)."""
    if finer is None:
        start, end = dialect.moment("k.bucket"), dialect.moment(f"k.bucket + {width}")
        exact = ""
        if dialect.sqlite:
            start = dialect.moment(f"k.bucket - {width}")
            end = dialect.moment(f"k.bucket + {2 * width}")
            bucket = dialect.floor(dialect.epoch("p.observed_at"), width)
            exact = f" AND {bucket} = k.bucket"
        return (
            "p.asset_id = k.asset_id AND p.source = k.source "
            f"AND p.observed_at >= {start} AND p.observed_at < {end}{exact}"
        )
    return (
        "r.asset_id = k.asset_id AND r.source = k.source "
        f"AND r.bucket > k.bucket - {width} AND r.bucket < k.bucket + {width} "
        f"AND {dialect.floor('r.bucket', width)} = k.bucket"
    )


def _recompute(dialect: Dialect, level: Level, finer: Level | None, keys: str) -> list[str]:
    """Delete the touched rows of `level` left empty, and recompute the others from the finer
    level (prices, for minutes). `keys`: the touched (asset_id, source, bucket) of `level`."""
    inside = _inside(dialect, level.width, finer)
    if finer is None:
        partials = from_prices(dialect, level.width, f"prices AS p JOIN ({keys}) AS k ON {inside}")
        remaining = f"SELECT 1 FROM prices AS p WHERE {inside}"
    else:
        relation = f"{finer.table} AS r JOIN ({keys}) AS k ON {inside}"
        partials = from_rollup(dialect, level.width, relation)
        remaining = f"SELECT 1 FROM {finer.table} AS r WHERE {inside}"
    delete = (
        f"DELETE FROM {level.table} WHERE ({', '.join(KEY)}) IN "
        f"(SELECT k.asset_id, k.bucket, k.source FROM ({keys}) AS k "
        f"WHERE NOT EXISTS ({remaining}))"
    )
    recompute = upsert(level.table, combine(dialect, partials), replace_set())
    return [delete, recompute]


def _pg_updated(dialect: Dialect) -> list[str]:
    statements = []
    finer: Level | None = None
    for level in LEVELS:
        statements += _recompute(dialect, level, finer, _pg_touched(dialect, level.width))
        finer = level
    return statements


def _pg_function(name: str, statements: list[str], unless: str = "") -> str:
    """A trigger function running `statements`, unless the query `unless` finds nothing."""
    body = "".join(f"    {statement};\n" for statement in statements)
    if unless:
        body = f"    IF NOT EXISTS ({unless}) THEN\n        RETURN NULL;\n    END IF;\n{body}"
    return (
        f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $body$\n"
        f"BEGIN\n{body}    RETURN NULL;\nEND\n$body$"
    )


def _pg_create(dialect: Dialect) -> list[str]:
    return [
        _pg_function(_PG_INSERT_FUNCTION, [_pg_inserted(dialect)]),
        # Updates of other columns only (provenance, a stream's quote) cost two hashed EXCEPTs
        # of the transition tables, and stop there.
        _pg_function(
            _PG_UPDATE_FUNCTION,
            _pg_updated(dialect),
            unless=f"SELECT 1 FROM ({_pg_changed()}) AS c",
        ),
        f"CREATE TRIGGER {_INSERT_TRIGGER} AFTER INSERT ON prices "
        f"REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION "
        f"{_PG_INSERT_FUNCTION}()",
        f"CREATE TRIGGER {_UPDATE_TRIGGER} AFTER UPDATE ON prices "
        f"REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {_PG_UPDATE_FUNCTION}()",
    ]


# ---- SQLite: row-level triggers ----


def _sqlite_inserted(dialect: Dialect) -> list[str]:
    """The new row merged into its minute, hour and day."""
    epoch = dialect.epoch("NEW.observed_at")
    return [
        upsert(
            level.table,
            f"VALUES (NEW.asset_id, {dialect.floor(epoch, level.width)}, NEW.source, "
            f"{observation('NEW', named=False)})",
            merge_set(dialect, level.table),
        )
        for level in LEVELS
    ]


def _sqlite_updated(dialect: Dialect) -> list[str]:
    """The buckets the row left (OLD) and entered (NEW) recomputed, level by level."""
    statements = []
    finer: Level | None = None
    for level in LEVELS:
        for row in ("OLD", "NEW"):
            bucket = dialect.floor(dialect.epoch(f"{row}.observed_at"), level.width)
            keys = f"SELECT {row}.asset_id AS asset_id, {row}.source AS source, {bucket} AS bucket"
            statements += _recompute(dialect, level, finer, keys)
        finer = level
    return statements


def _sqlite_trigger(name: str, event: str, statements: list[str], when: str = "") -> str:
    body = "".join(f"    {statement};\n" for statement in statements)
    condition = f" WHEN {when}" if when else ""
    return (
        f"CREATE TRIGGER {name} AFTER {event} ON prices FOR EACH ROW{condition}\nBEGIN\n{body}END"
    )


def _sqlite_create(dialect: Dialect) -> list[str]:
    # The id too: a renumbered price (a stream re-announcing it) is named by its new id.
    watched = ("id", *WATCHED)
    changed = " OR ".join(f"OLD.{name} IS NOT NEW.{name}" for name in watched)
    return [
        _sqlite_trigger(_INSERT_TRIGGER, "INSERT", _sqlite_inserted(dialect)),
        _sqlite_trigger(
            _UPDATE_TRIGGER,
            f"UPDATE OF {', '.join(watched)}",
            _sqlite_updated(dialect),
            changed,
        ),
    ]


# ---- what the migration runs ----


def _run(connection: Connection, statements: list[str]) -> None:
    driver = connection.exec_driver_sql
    for statement in statements:
        driver(statement)


def fill(connection: Connection) -> None:
    """Back-fill the (empty) roll-ups from the stored prices."""
    _run(connection, backfill(Dialect(connection.dialect.name)))


def rename_picks(connection: Connection) -> None:
    """Give every roll-up pick the id its price has now (`renamed_picks`)."""
    _run(connection, renamed_picks())


def create_triggers(connection: Connection) -> None:
    """Create (again) the triggers that keep the roll-ups."""
    dialect = Dialect(connection.dialect.name)
    build: Callable[[Dialect], list[str]] = _sqlite_create if dialect.sqlite else _pg_create
    _run(connection, build(dialect))


def drop_triggers(connection: Connection) -> None:
    statements = [
        f"DROP TRIGGER IF EXISTS {_INSERT_TRIGGER}",
        f"DROP TRIGGER IF EXISTS {_UPDATE_TRIGGER}",
    ]
    if connection.dialect.name != "sqlite":
        statements = [f"{statement} ON prices" for statement in statements]
        statements += [
            f"DROP FUNCTION IF EXISTS {_PG_INSERT_FUNCTION}()",
            f"DROP FUNCTION IF EXISTS {_PG_UPDATE_FUNCTION}()",
        ]
    _run(connection, statements)
