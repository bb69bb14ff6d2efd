"""Database connection pool use as Prometheus gauges, read from the SQLAlchemy pool at scrape time.

Starlette-free, so the worker registers it on its own registry too.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.ext.asyncio import AsyncEngine


class PoolCollector(Collector):
    """`kasparro_db_pool_size`, `kasparro_db_pool_checked_out` and `..._overflow` of one engine.

    Pools without these counters (SQLAlchemy's NullPool, StaticPool) report only what they have.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    def collect(self) -> Iterable[GaugeMetricFamily]:
        pool = self._engine.sync_engine.pool
        values: dict[str, tuple[str, float | None]] = {
            "kasparro_db_pool_size": ("Configured size of the database pool", _call(pool, "size")),
            "kasparro_db_pool_checked_out": (
                "Database connections in use (checked out of the pool)",
                _call(pool, "checkedout"),
            ),
            "kasparro_db_pool_checked_in": (
                "Idle database connections held by the pool",
                _call(pool, "checkedin"),
            ),
            "kasparro_db_pool_overflow": (
                "Connections open beyond the pool size (negative: unused pool slots)",
                _call(pool, "overflow"),
            ),
        }
        for name, (documentation, value) in values.items():
            family = GaugeMetricFamily(name, documentation)
            if value is not None:
                family.add_metric([], value)
            yield family

    def describe(self) -> Iterable[GaugeMetricFamily]:
        # Names only: describing must not touch the pool (the engine may be disposed).
        for name in (
            "kasparro_db_pool_size",
            "kasparro_db_pool_checked_out",
            "kasparro_db_pool_checked_in",
            "kasparro_db_pool_overflow",
        ):
            yield GaugeMetricFamily(name, name)


def _call(pool: object, method: str) -> float | None:
    function = getattr(pool, method, None)
    if not callable(function):
        return None
    value = function()
    return float(value) if isinstance(value, int | float) else None


def register_pool(registry: CollectorRegistry, engine: AsyncEngine) -> PoolCollector:
    """Register the pool gauges of `engine`; `registry.unregister(collector)` removes them."""
    collector = PoolCollector(engine)
    registry.register(collector)
    return collector
