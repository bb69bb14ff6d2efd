"""Engine and session factory built from Settings. No application imports beyond settings."""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import event, exc, text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.util import greenlet_spawn

from server.settings import Settings

T = TypeVar("T")

# primary engine -> the engine its plain reads use (autocommit; on the replica when it has one)
_readers: weakref.WeakKeyDictionary[AsyncEngine, AsyncEngine] = weakref.WeakKeyDictionary()
# engine -> its autocommit variant
_autocommits: weakref.WeakKeyDictionary[AsyncEngine, AsyncEngine] = weakref.WeakKeyDictionary()
# primary engine -> its read replica's engine (DATABASE_READ_URL)
_replicas: weakref.WeakKeyDictionary[AsyncEngine, AsyncEngine] = weakref.WeakKeyDictionary()


def create_engine(settings: Settings, **overrides: Any) -> AsyncEngine:
    """The async engine for DATABASE_URL, tuned per backend."""
    if settings.is_sqlite:
        engine = create_async_engine(
            settings.database_url, connect_args={"timeout": 30}, **overrides
        )
        _configure_sqlite(engine.sync_engine)
        return engine
    options: dict[str, Any] = {
        "pool_size": settings.db_pool_size,
        # No overflow: connections beyond the pool would be opened and closed again and again
        # under a steady load above the pool size (a TLS handshake each); a request waits for a
        # pooled one instead, which a page read gives back in well under a millisecond.
        "max_overflow": 0,
        # No pre-ping (a round trip per checkout): a connection whose server went away is
        # dropped at checkout when asyncpg has seen its socket close (a restart), and otherwise
        # on its first error, which invalidates the whole pool; `read` retries that once.
        "pool_recycle": 1800,
        # During an outage a request fails after the connect timeout, not a minute later.
        "connect_args": {"timeout": settings.db_connect_timeout, "command_timeout": 60},
    }
    options.update(overrides)
    engine = create_async_engine(settings.database_url, **options)
    event.listen(engine.sync_engine, "checkout", _refuse_closed)
    return engine


def create_maintenance_engine(settings: Settings) -> AsyncEngine:
    """The engine of migrations and retention: one connection, and no limit on how long a
    statement runs (converting or back-filling a table of many millions of rows takes minutes,
    and a client-side timeout would end the migration half-way; its transaction rolls back)."""
    if settings.is_sqlite:
        return create_engine(settings)
    return create_engine(
        settings,
        pool_size=1,
        connect_args={"timeout": settings.db_connect_timeout, "command_timeout": None},
    )


def _refuse_closed(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """A pooled connection asyncpg knows to be closed is replaced, not handed out (no I/O)."""
    driver = getattr(dbapi_connection, "driver_connection", None)
    if driver is not None and driver.is_closed():
        raise exc.DisconnectionError("the pooled connection was closed by the server")


def create_read_engine(settings: Settings, **overrides: Any) -> AsyncEngine | None:
    """The engine for DATABASE_READ_URL (a streaming replica), or None when it is unset."""
    if settings.database_read_url is None:
        return None
    return create_engine(
        settings.model_copy(update={"database_url": settings.database_read_url}), **overrides
    )


def use_replica(primary: AsyncEngine, replica: AsyncEngine | None) -> None:
    """Send `primary`'s plain reads (`read_engine`, `read`, `driver_connection`) to `replica`
    from now on; None: back to `primary` itself."""
    _readers.pop(primary, None)
    if replica is None:
        _replicas.pop(primary, None)
    else:
        _replicas[primary] = replica


def replica_of(engine: AsyncEngine) -> AsyncEngine | None:
    """The replica that serves `engine`'s plain reads, if any."""
    return _replicas.get(engine)


def read_engine(engine: AsyncEngine, *, primary: bool = False) -> AsyncEngine:
    """`engine` for plain reads: autocommit, so a read sends its statements and nothing else
    (no BEGIN before, no ROLLBACK after). Writers keep `engine` and its transactions.

    With a replica (`use_replica`), the replica's autocommit engine: a consistent snapshot that
    may be older than the primary. `primary=True` reads the primary itself, for whatever must see
    a row just committed there (the live hub, a mutation's result, health of the primary).

    SQLite's driver opens a transaction only before a write, so there `engine` itself reads."""
    if engine.dialect.name == "sqlite":
        return engine
    if primary:
        return _autocommit(engine)
    reader = _readers.get(engine)
    if reader is None:
        reader = _readers[engine] = _autocommit(_replicas.get(engine, engine))
    return reader


def _autocommit(engine: AsyncEngine) -> AsyncEngine:
    reader = _autocommits.get(engine)
    if reader is None:
        reader = _autocommits[engine] = engine.execution_options(isolation_level="AUTOCOMMIT")
    return reader


@asynccontextmanager
async def driver_connection(engine: AsyncEngine, *, primary: bool = False) -> AsyncIterator[Any]:
    """A pooled connection's driver connection (asyncpg's) for one statement sent as it is.

    The pool's checkout and checkin only: no SQLAlchemy Connection around it, so none of its
    per-checkout work (execution options, isolation level set and reset, events), which costs a
    small read more than the statement itself. asyncpg sends a statement outside any
    transaction, so a read here is an autocommit read as on `read_engine`. A connection that
    turns out closed is invalidated rather than pooled again. On the replica when `engine` has
    one, unless `primary` (see `read_engine`)."""
    if not primary:
        engine = _replicas.get(engine, engine)
    fairy = await greenlet_spawn(engine.sync_engine.raw_connection)
    try:
        yield fairy.driver_connection
    except BaseException:
        driver = fairy.driver_connection
        if driver is not None and driver.is_closed():
            fairy.invalidate()
        raise
    finally:
        await greenlet_spawn(fairy.close)


async def read(
    engine: AsyncEngine,
    work: Callable[[AsyncConnection], Awaitable[T]],
    *,
    primary: bool = False,
) -> T:
    """`work(conn)` on an autocommit connection of `engine`, or of its replica unless `primary`
    (see `read_engine`).

    Run once more on a new connection when the first one turns out dead (the database restarted
    since it was pooled): SQLAlchemy invalidates it and the pool on that error, so the second
    checkout connects afresh. `work` must only read, so running it twice is harmless.
    """
    reader = read_engine(engine, primary=primary)
    try:
        async with reader.connect() as conn:
            return await work(conn)
    except exc.DBAPIError as error:
        if not error.connection_invalidated:
            raise
    async with reader.connect() as conn:
        return await work(conn)


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[Any]:
    return async_sessionmaker(engine, expire_on_commit=False)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        # WAL lets the server read while a run writes; foreign keys are off by default in SQLite.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()


async def ping(engine: AsyncEngine) -> bool:
    """True when `engine`'s database itself (never its replica) answers a trivial query."""
    try:
        await read(engine, lambda conn: conn.execute(text("SELECT 1")), primary=True)
    except Exception:  # any failure means "not reachable" to a health check
        return False
    return True


# The standby's replay lag: how long ago the newest replayed transaction committed on the
# primary (NULL on a primary, or on a standby that has replayed nothing yet).
_REPLAY_LAG = text(
    "SELECT pg_is_in_recovery() AS standby, "
    "extract(epoch FROM now() - pg_last_xact_replay_timestamp()) AS lag"
)


async def replica_status(replica: AsyncEngine) -> tuple[bool, float | None]:
    """(reachable, replay lag in seconds) of a read replica; the lag is None when it cannot be
    told (not a standby, nothing replayed yet, or unreachable)."""
    try:
        row = (await read(replica, lambda conn: conn.execute(_REPLAY_LAG), primary=True)).one()
    except Exception:  # any failure means "not reachable" to a health check
        return False, None
    if not row.standby or row.lag is None:
        return True, None
    return True, max(0.0, float(row.lag))
