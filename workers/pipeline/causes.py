"""What stopped a run, in the words an operator acts on: the cause that prefixes a run's error.

- "database unavailable": the database refused, dropped or timed out a connection, or is
  shutting down or starting up (SQLSTATE class 08, 57P01-57P03, 53300);
- "Redis unavailable": Redis (the broker, the shared rate limit) cannot be reached;
- "upstream": a source's vendor or file answered with an error or not at all;
- "bad data": what was read cannot be stored (a value the database refuses).

Anything else has no cause prefix: the error's class then says what it was.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from server.broker import BrokerUnavailable
from workers.sources.base import RecordError, SourceError

DATABASE: Final = "database unavailable"
REDIS: Final = "Redis unavailable"
UPSTREAM: Final = "upstream"
BAD_DATA: Final = "bad data"

_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"})
_BAD_DATA_SQLSTATE_CLASSES = ("22", "23")  # data exception, integrity constraint violation


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and what it wraps: SQLAlchemy's `orig`, the driver's cause; and, for a driver's
    interface error raised while handling another error (a transaction's rollback refused on
    the connection the first error broke: "another operation is in progress", "the connection
    is closed"), the error it was handling: the consequence says less than the cause."""
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in found):
        found.append(current)
        orig = getattr(current, "orig", None) if isinstance(current, DBAPIError) else None
        following = orig if isinstance(orig, BaseException) else current.__cause__
        if following is None and _is_interface_error(current):
            context = current.__context__
            following = None if current.__suppress_context__ else context
        current = following
    return found


def _is_interface_error(error: BaseException) -> bool:
    """A DB-API InterfaceError (SQLAlchemy's, its adapters', asyncpg's or sqlite3's): about the
    connection's state, not the statement."""
    return type(error).__name__ == "InterfaceError" and (
        _from(error, "sqlalchemy") or _from(error, "asyncpg") or _from(error, "sqlite3")
    )


def _sqlstate(exc: BaseException) -> str | None:
    state = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    return state if isinstance(state, str) else None


def _from(error: BaseException, package: str) -> bool:
    return type(error).__module__.split(".")[0] == package


def is_database_unavailable(exc: BaseException) -> bool:
    """The database could not serve (a retry later may succeed)."""
    for error in _chain(exc):
        if isinstance(error, OperationalError | PoolTimeout | DisconnectionError):
            return True
        if isinstance(error, DBAPIError) and error.connection_invalidated:
            return True
        state = _sqlstate(error)
        if state is not None and (state.startswith("08") or state in _UNAVAILABLE_SQLSTATES):
            return True
        # Sockets and timeouts (asyncpg raises them as they are while connecting), but not
        # Redis's or the upstream client's.
        if isinstance(error, OSError) and not _from(error, "redis") and not _from(error, "httpx"):
            return True
    return False


def cause_of(exc: BaseException) -> str | None:
    """The cause of a run's failure, or None when it is none of the four."""
    chain = _chain(exc)
    if any(isinstance(e, BrokerUnavailable) or _from(e, "redis") for e in chain) and not any(
        isinstance(e, DBAPIError) for e in chain
    ):
        redis_down = any(
            isinstance(e, BrokerUnavailable | OSError)
            or type(e).__name__ in {"ConnectionError", "TimeoutError", "BusyLoadingError"}
            for e in chain
        )
        if redis_down:
            return REDIS
    if any(isinstance(e, SourceError) or _from(e, "httpx") for e in chain):
        return UPSTREAM
    if is_database_unavailable(exc):
        return DATABASE
    if any(isinstance(e, RecordError | DataError | IntegrityError) for e in chain):
        return BAD_DATA
    state = next((s for s in map(_sqlstate, chain) if s is not None), None)
    if state is not None and state.startswith(_BAD_DATA_SQLSTATE_CLASSES):
        return BAD_DATA
    return None
