"""The broker contract: workers publish prices to it, the GraphQL server subscribes to it."""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self, TypeAlias


@dataclass(frozen=True, slots=True)
class Message:
    """One published payload. `channel` is the name the publisher used, without any prefix."""

    channel: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Gap:
    """Messages may have been missed (a reconnect, an overflow): replay from the database.

    `channel` is None when the gap may cover every channel of the subscription.
    """

    channel: str | None = None
    reason: str = ""


Event: TypeAlias = Message | Gap


class BrokerUnavailable(Exception):
    """The broker could not be reached, even after retrying."""


class Subscription(Protocol):
    """Events of some channels: an async context manager and an async iterator of `Event`.

    It is really subscribed when `__aenter__` returns, so a message published after that is
    received; leaving the `async with` unsubscribes and frees its connection.
    """

    @property
    def channels(self) -> tuple[str, ...]: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

    def __aiter__(self) -> Self: ...

    async def __anext__(self) -> Event: ...

    async def aclose(self) -> None:
        """Unsubscribe and free resources; iteration ends. Safe to call twice."""


class Broker(Protocol):
    """Best-effort pub/sub: a `Gap` says when messages may have been lost (replay them from the
    database); a retried publish may arrive twice.
    """

    async def publish(self, channel: str, data: bytes) -> int:
        """Send `data` to the subscribers of `channel`; returns how many received it."""

    def subscribe(self, *channels: str) -> Subscription:
        """A subscription to exact channel names, to be entered with `async with`."""

    async def ping(self) -> bool:
        """Whether the broker is reachable now. Never raises."""

    async def close(self) -> None:
        """Release connections; open subscriptions end. The broker is unusable afterwards."""


def unique_channels(channels: tuple[str, ...]) -> tuple[str, ...]:
    """`channels` without duplicates, in order; at least one non-empty name is required."""
    if not channels:
        raise ValueError("subscribe() needs at least one channel")
    if not all(channels):
        raise ValueError(f"channel names must be non-empty strings, got {channels!r}")
    return tuple(dict.fromkeys(channels))
