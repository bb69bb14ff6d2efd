"""Time partitions of `prices` (by observed_at) and `raw_records` (by fetched_at) on PostgreSQL.

Each table is partitioned by RANGE on its time into children of one interval (a day, an ISO week
or a month, `KASPARRO_PARTITION_INTERVAL`), named as pg_partman names them (`prices_p2026_12`,
`prices_p2026w49`, `prices_p2026_12_07`), plus a DEFAULT partition (`prices_default`).

- `ensure_partitions` makes the children from one interval before now to `ahead` intervals
  after it, and moves any rows that reached the DEFAULT partition (a backfill of old history, a
  clock far ahead) into children of their own. The worker runs it at start-up and on a schedule,
  and `kasparro migrate` after the migrations; with pg_partman (`manager`), pg_partman makes the
  children ahead (`run_maintenance`) and this module only empties the DEFAULT partition.
- An insert never fails for want of a partition: a time no child covers lands in DEFAULT, and
  the next maintenance gives it a child. Until then it is read like any other row.
- `expired` lists the children wholly older than a cutoff; `drop` detaches and drops them, whole
  (retention: `server/retention.py`).

SQLite has no partitions: every function here is for PostgreSQL, and `is_partitioned` is False
on SQLite.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

Interval = Literal["day", "week", "month"]
Manager = Literal["auto", "pg_partman", "worker"]

# The partitioned tables and their time columns, in the order a batch writes them (maintenance
# locks them in the same order, one transaction each, so it cannot deadlock with a writer).
PARTITIONED = {"raw_records": "fetched_at", "prices": "observed_at"}
# One maintenance at a time, whichever process runs it.
MAINTENANCE_LOCK = 0x6B617371  # "kasq"
# Creating or dropping a partition locks its table: wait this long for running statements, then
# give up until the next maintenance rather than queue every reader behind the DDL.
LOCK_TIMEOUT = "5s"
_PARTMAN_INTERVALS = {"day": "daily", "week": "weekly", "month": "monthly"}


@dataclass(frozen=True, slots=True)
class Partition:
    """One child of a partitioned table: its range [lower, upper) (None for DEFAULT) and the
    planner's estimate of its rows (None before it was ever analysed)."""

    table: str
    name: str
    lower: datetime | None
    upper: datetime | None
    rows: int | None

    @property
    def is_default(self) -> bool:
        return self.lower is None and self.upper is None


# The names a child of a partitioned table may have: ours and pg_partman's (any interval), the
# DEFAULT partition, and a table being converted by the migration.
_CHILD_NAME = re.compile(rf"^(?:{'|'.join(PARTITIONED)})_(?:p\d{{4}}\w*|default|before_\d+)$")


def is_partition_name(name: str | None) -> bool:
    """Whether a table name is a child of `prices` or `raw_records`, not a table of the schema
    (alembic's comparison of the models with a database leaves them out)."""
    return name is not None and _CHILD_NAME.match(name) is not None


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """alembic's `include_name`: the schema's objects, without the partitions' tables."""
    return not (type_ == "table" and is_partition_name(name))


def interval_start(moment: datetime, interval: Interval) -> datetime:
    """The start (UTC) of the interval holding `moment`: midnight, Monday midnight, the 1st."""
    day = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if interval == "week":
        return day - timedelta(days=day.weekday())
    if interval == "month":
        return day.replace(day=1)
    return day


def next_start(start: datetime, interval: Interval) -> datetime:
    """The start of the interval after the one starting at `start`."""
    if interval == "month":
        return (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    return start + timedelta(days=7 if interval == "week" else 1)


def partition_name(table: str, start: datetime, interval: Interval) -> str:
    """pg_partman's name for the child starting at `start`."""
    if interval == "week":
        year, week, _ = start.isocalendar()
        return f"{table}_p{year}w{week:02d}"
    return f"{table}_p{start:%Y_%m}" if interval == "month" else f"{table}_p{start:%Y_%m_%d}"


def window(now: datetime, interval: Interval, ahead: int) -> list[datetime]:
    """The starts of the intervals maintenance keeps made: the one before now's (late rows of
    it), now's, and `ahead` after it."""
    start = interval_start(interval_start(now, interval) - timedelta(days=1), interval)
    starts = [start]
    for _ in range(ahead + 1):
        starts.append(next_start(starts[-1], interval))
    return starts


def create_partition_sql(table: str, start: datetime, interval: Interval) -> str:
    """CREATE TABLE of the (empty) child of `table` for the interval starting at `start`."""
    name = partition_name(table, start, interval)
    bounds = f"FROM ({_literal(start)}) TO ({_literal(next_start(start, interval))})"
    return f"CREATE TABLE {name} PARTITION OF {table} FOR VALUES {bounds}"


_STATISTICS_DEFINITION = re.compile(r"^CREATE STATISTICS (\S+)(.*) FROM (\S+)$")


def child_statistics_sql(table: str, child: str, name: str, definition: str) -> str:
    """The parent's extended statistics object `name` (`definition`, as pg_get_statisticsobjdef
    gives it) made on the child. PostgreSQL plans a partitioned table's scans partition by
    partition, from each partition's own statistics: a parent's extended statistics are not
    used there, and the pair (asset_id, source) would be misjudged (tables.py says why)."""
    match = _STATISTICS_DEFINITION.match(definition)
    if match is None:
        raise ValueError(f"unexpected statistics definition {definition!r}")
    own = child + name.removeprefix(table)
    return f"CREATE STATISTICS IF NOT EXISTS {own}{match[2]} FROM {child}"


async def copy_statistics(conn: AsyncConnection, table: str) -> None:
    """Give every child of `table` the parent's extended statistics it lacks."""
    rows = await conn.execute(
        text(
            "SELECT stxname, pg_get_statisticsobjdef(oid) FROM pg_statistic_ext"
            " WHERE stxrelid = to_regclass(:table)"
        ),
        {"table": table},
    )
    parents = rows.all()
    if not parents:
        return
    existing = set((await conn.scalars(text("SELECT stxname FROM pg_statistic_ext"))).all())
    for child in await partitions(conn, table):
        for name, definition in parents:
            if child.name + name.removeprefix(table) not in existing:
                await conn.execute(text(child_statistics_sql(table, child.name, name, definition)))


async def is_partitioned(conn: AsyncConnection, table: str) -> bool:
    """Whether `table` is a partitioned table (never on SQLite)."""
    if conn.dialect.name != "postgresql":
        return False
    found = await conn.scalar(
        text(
            "SELECT 1 FROM pg_partitioned_table AS p JOIN pg_class AS c ON c.oid = p.partrelid"
            " WHERE c.oid = to_regclass(:table)"
        ),
        {"table": table},
    )
    return found is not None


_CHILDREN = text(
    """
    SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound, c.reltuples::bigint
    FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
    WHERE i.inhparent = to_regclass(:table)
    ORDER BY c.relname
    """
)


async def partitions(conn: AsyncConnection, table: str) -> list[Partition]:
    """The children of `table`, oldest first, DEFAULT last (none on SQLite)."""
    if conn.dialect.name != "postgresql":
        return []
    await conn.execute(text("SET LOCAL TimeZone = 'UTC'"))  # the bounds' text, in UTC
    found = []
    for name, bound, tuples in (await conn.execute(_CHILDREN, {"table": table})).all():
        lower, upper = _bounds(bound)
        found.append(Partition(table, name, lower, upper, None if tuples < 0 else int(tuples)))
    far = datetime.max.replace(tzinfo=UTC)
    return sorted(found, key=lambda p: (p.is_default, p.lower or far))


_EDGES = """
    SELECT ARRAY(SELECT pg_get_expr(c.relpartbound, c.oid)
                 FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
                 WHERE i.inhparent = CAST(:table AS regclass)) AS bounds,
           (SELECT min({column}) FROM {table}) AS oldest,
           (SELECT max({column}) FROM {table}) AS newest
"""


async def time_edges(
    conn: AsyncConnection, table: str
) -> tuple[list[datetime], datetime | None, datetime | None]:
    """Where `table`'s children start and end (DEFAULT aside), sorted and distinct, and the
    oldest and newest time it holds, in one statement; no edges on SQLite or for a table
    without partitions. Read in any session time zone, without a transaction of its own: each
    bound's text carries its offset."""
    if conn.dialect.name != "postgresql":
        return [], None, None
    statement = text(_EDGES.format(column=PARTITIONED[table], table=table))
    bounds, oldest, newest = (await conn.execute(statement, {"table": table})).one()
    edges = {moment for bound in bounds for moment in _bounds(bound) if moment is not None}
    return sorted(edges), oldest, newest


def _bounds(bound: str) -> tuple[datetime | None, datetime | None]:
    """FOR VALUES FROM ('2026-12-01 00:00:00+00') TO ('2027-01-01 00:00:00+00'), or DEFAULT."""
    if bound == "DEFAULT":
        return None, None
    low, high = bound.removeprefix("FOR VALUES FROM (").split(") TO (")
    return _bound(low), _bound(high.removesuffix(")"))


def _bound(value: str) -> datetime | None:
    if value in {"MINVALUE", "MAXVALUE"}:
        return None
    moment = datetime.fromisoformat(value.strip("'"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _literal(moment: datetime) -> str:
    return f"'{moment.astimezone(UTC).isoformat()}'"


async def create_partition(
    conn: AsyncConnection, table: str, start: datetime, interval: Interval
) -> str | None:
    """Make the child of `table` for the interval starting at `start`, moving the rows of that
    interval out of DEFAULT; None (nothing done) when a child already covers any of it."""
    end = next_start(start, interval)
    children = await partitions(conn, table)
    if any(
        not p.is_default
        and (p.lower is None or p.lower < end)
        and (p.upper is None or p.upper > start)
        for p in children
    ):
        return None
    name = partition_name(table, start, interval)
    column = PARTITIONED[table]
    bounds = f"FROM ({_literal(start)}) TO ({_literal(end)})"
    default = next((p.name for p in children if p.is_default), None)
    within = f"{column} >= {_literal(start)} AND {column} < {_literal(end)}"
    stray = default is not None and await conn.scalar(
        text(f"SELECT EXISTS (SELECT FROM {default} WHERE {within})")  # noqa: S608
    )
    if not stray:
        await conn.execute(text(create_partition_sql(table, start, interval)))
        return name
    # DEFAULT holds rows of the interval: the child is made beside the table, filled with them,
    # and attached (its indexes are built once, on its rows). Readers wait meanwhile: ATTACH
    # alone locks the parent only against other DDL, and a query planned before the commit but
    # run after it would read neither the rows DEFAULT gave up nor the child holding them (an
    # empty `max(id)` once started the live hub from zero).
    await conn.execute(text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
    await conn.execute(
        text(f"CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    )
    await conn.execute(
        text(
            f"WITH moved AS (DELETE FROM {default} WHERE {within} RETURNING *)"  # noqa: S608
            f" INSERT INTO {name} SELECT * FROM moved"
        )
    )
    await conn.execute(text(f"ALTER TABLE {table} ATTACH PARTITION {name} FOR VALUES {bounds}"))
    return name


async def create_default(conn: AsyncConnection, table: str) -> str | None:
    """The DEFAULT partition of `table`, made if it has none; its name when made."""
    if any(p.is_default for p in await partitions(conn, table)):
        return None
    name = f"{table}_default"
    await conn.execute(text(f"CREATE TABLE {name} PARTITION OF {table} DEFAULT"))
    return name


async def _default_starts(conn: AsyncConnection, table: str, interval: Interval) -> list[datetime]:
    """The starts of the intervals that rows in DEFAULT belong to."""
    default = next((p.name for p in await partitions(conn, table) if p.is_default), None)
    if default is None:
        return []
    column = PARTITIONED[table]
    found = await conn.scalars(
        text(f"SELECT DISTINCT date_trunc('{interval}', {column}, 'UTC') FROM {default}")  # noqa: S608
    )
    return sorted(interval_start(moment, interval) for moment in found.all())


async def partman_schema(conn: AsyncConnection) -> str | None:
    """The schema pg_partman is installed in, in this database; None without it."""
    found = await conn.scalar(
        text(
            "SELECT n.nspname FROM pg_extension AS e"
            " JOIN pg_namespace AS n ON n.oid = e.extnamespace WHERE e.extname = 'pg_partman'"
        )
    )
    return None if found is None else str(found)


async def install_partman(conn: AsyncConnection) -> str:
    """CREATE EXTENSION pg_partman (in schema `partman`), unless it is there; its schema."""
    schema = await partman_schema(conn)
    if schema is None:
        await conn.execute(text("CREATE SCHEMA IF NOT EXISTS partman"))
        await conn.execute(text("CREATE EXTENSION pg_partman SCHEMA partman"))
        schema = "partman"
    return schema


async def _managed(conn: AsyncConnection, schema: str, table: str) -> bool:
    """Whether pg_partman has `table` in its configuration."""
    found = await conn.scalar(
        text(f"SELECT 1 FROM {schema}.part_config WHERE parent_table = :parent"),  # noqa: S608
        {"parent": f"public.{table}"},
    )
    return found is not None


async def _partman_maintain(
    conn: AsyncConnection, schema: str, table: str, interval: Interval, ahead: int
) -> list[str]:
    """Hand `table` to pg_partman (once) and let it make the children ahead; the names made."""
    before = {p.name for p in await partitions(conn, table)}
    if not await _managed(conn, schema, table):
        # create_parent makes its own DEFAULT partition: ours goes first (empty by now).
        for child in await partitions(conn, table):
            if child.is_default:
                await conn.execute(text(f"DROP TABLE {child.name}"))
        await conn.execute(
            text(
                f"SELECT {schema}.create_parent(:parent, :control, 'native', :interval,"
                " p_premake := :ahead, p_jobmon := false)"
            ),
            {
                "parent": f"public.{table}",
                "control": PARTITIONED[table],
                "interval": _PARTMAN_INTERVALS[interval],
                "ahead": ahead,
            },
        )
    else:
        await conn.execute(
            text(f"UPDATE {schema}.part_config SET premake = :ahead WHERE parent_table = :parent"),  # noqa: S608
            {"ahead": ahead, "parent": f"public.{table}"},
        )
        await conn.execute(
            text(f"SELECT {schema}.run_maintenance(:parent, p_jobmon := false)"),
            {"parent": f"public.{table}"},
        )
    return sorted({p.name for p in await partitions(conn, table)} - before)


async def _lock(conn: AsyncConnection) -> None:
    await conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    await conn.execute(text("SET LOCAL TimeZone = 'UTC'"))
    await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MAINTENANCE_LOCK})


async def ensure_partitions(
    engine: AsyncEngine,
    *,
    interval: Interval,
    ahead: int,
    manager: Manager = "auto",
    now: datetime | None = None,
    keep: Mapping[str, timedelta | None] | None = None,
) -> list[str]:
    """Make the children of every partitioned table from one interval before `now` to `ahead`
    intervals after it, and children for any rows in DEFAULT (moving them there); return the
    names made. A no-op on SQLite, and for a table that is not partitioned. Each table is one
    transaction; a lock that cannot be had within LOCK_TIMEOUT fails it (retry later).

    `keep`: the retention policies by table; an empty child that retention would drop at once
    (the interval before now's, under a policy shorter than an interval) is not made."""
    if engine.dialect.name != "postgresql":
        return []
    moment = now or datetime.now(UTC)
    made: list[str] = []
    for table in PARTITIONED:
        async with engine.begin() as conn:
            if not await is_partitioned(conn, table):
                continue
            await _lock(conn)
            schema = await partman_schema(conn)
            if manager == "pg_partman" and schema is None:
                schema = await install_partman(conn)
            partman = schema is not None and manager != "worker"
            if partman and not await _managed(conn, str(schema), table):
                # Handing the table over drops our DEFAULT: no write may reach it meanwhile.
                await conn.execute(text(f"LOCK TABLE {table} IN EXCLUSIVE MODE"))
            # Rows in DEFAULT first: a child made for the future must not find them there.
            for start in await _default_starts(conn, table, interval):
                made += filter(None, [await create_partition(conn, table, start, interval)])
            if partman:
                assert schema is not None
                made += await _partman_maintain(conn, schema, table, interval, ahead)
            else:
                await create_default(conn, table)
                policy = (keep or {}).get(table)
                for start in window(moment, interval, ahead):
                    if policy is not None and next_start(start, interval) <= moment - policy:
                        continue
                    made += filter(None, [await create_partition(conn, table, start, interval)])
            await copy_statistics(conn, table)
    return made


async def expired(conn: AsyncConnection, table: str, cutoff: datetime) -> list[Partition]:
    """The children of `table` whose every row is older than `cutoff` (DEFAULT never)."""
    return [
        p
        for p in await partitions(conn, table)
        if not p.is_default and p.upper is not None and p.upper <= cutoff
    ]


async def drop(conn: AsyncConnection, partition: Partition) -> None:
    """Detach and drop one child: its rows go at once, whatever their number."""
    await conn.execute(text(f"ALTER TABLE {partition.table} DETACH PARTITION {partition.name}"))
    await conn.execute(text(f"DROP TABLE {partition.name}"))
