"""Pub/sub between the workers (publishers) and the GraphQL server (subscribers).

`create_broker` picks the implementation; redis is imported only when a Redis broker is made,
so importing this package stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from server.broker.base import (
    Broker,
    BrokerUnavailable,
    Event,
    Gap,
    Message,
    Subscription,
)
from server.broker.channels import KEY_PREFIX
from server.broker.memory import MemoryBroker

if TYPE_CHECKING:
    from server.broker.redis import RedisBroker

__all__ = [
    "Broker",
    "BrokerUnavailable",
    "Event",
    "Gap",
    "MemoryBroker",
    "Message",
    "RedisBroker",
    "Subscription",
    "create_broker",
]


def create_broker(redis_url: str | None, *, prefix: str = KEY_PREFIX) -> Broker:
    """The in-memory broker when `redis_url` is None (embedded), else Redis pub/sub at it."""
    if redis_url is None:
        return MemoryBroker()
    from server.broker.redis import RedisBroker

    return RedisBroker(redis_url, prefix=prefix)


def __getattr__(name: str) -> Any:
    if name == "RedisBroker":
        from server.broker.redis import RedisBroker

        return RedisBroker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
