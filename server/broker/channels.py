"""The broker's contract, one home for both sides: the channel names, the prefix of every Redis
key, how events are written on the wire and read back, and `publish`.

Publishers (the workers, triggerIngestion, the live hub's database follower) and readers (the
live hub, the price cache it feeds) import it from here, so neither side imports the other.

On "prices" (JSON objects):
  - a commit: `{"run_id", "source", "prices": [{"id", ...}, ...], "updated_ids": [...]}`, the
    rows it inserted (ids in commit order) and, only when there are some, the ids it corrected;
  - an announcement of other processes' commits found in the database (embedded mode):
    `{"origin": "database", "prices": [{"id"}, ...]}`;
  - a resync, `{"type": "resync", "reason"}`: stored prices changed in a way no list of ids
    tells (an identity change); readers that keep prices reload them.
On "runs": an etl_runs row (column name to value) each time a run's status changes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from server.broker.base import Broker, BrokerUnavailable

if TYPE_CHECKING:
    from prometheus_client import Counter

log = structlog.get_logger(__name__)

PRICES_CHANNEL = "prices"
RUNS_CHANNEL = "runs"

# What every Redis name of the project starts with (channels, rate-limit buckets, persisted
# queries), unless a deployment sharing one Redis picks another.
KEY_PREFIX = "kasparro:"


# ---- the codec ----


def encode(payload: Any) -> bytes:
    """An event as sent: compact JSON; datetimes in ISO 8601, other non-JSON values as text."""
    return json.dumps(payload, separators=(",", ":"), default=_default).encode()


def _default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def decode(data: bytes) -> Any:
    """An event as received, or None when it is not JSON."""
    try:
        return json.loads(data)
    except ValueError:
        return None


def resync(reason: str) -> dict[str, str]:
    """The "prices" event that makes readers reload every price they keep."""
    return {"type": "resync", "reason": reason}


def announcement(ids: Iterable[int]) -> dict[str, Any]:
    """The "prices" event announcing commits of other processes found in the database."""
    return {"origin": "database", "prices": [{"id": i} for i in ids]}


def inserted_ids(payload: Any) -> list[int]:
    """The ids of the prices a commit inserted, from a decoded "prices" event; [] for any other
    event. Entries without a readable id are left out."""
    if not isinstance(payload, dict) or not isinstance(payload.get("prices"), list):
        return []
    ids: list[int] = []
    for price in payload["prices"]:
        try:
            ids.append(int(price["id"]))
        except (KeyError, TypeError, ValueError):
            continue
    return ids


def price_ids(data: bytes) -> list[int]:
    """Every price id of a "prices" commit event, inserted then corrected; ValueError when the
    event is not a commit (a resync, or unreadable): what was read of it cannot be trusted."""
    try:
        payload = json.loads(data)
        ids = [int(price["id"]) for price in payload["prices"]]
        return ids + [int(price_id) for price_id in payload.get("updated_ids", ())]
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"unreadable price event: {exc!r}") from None


# ---- publishing ----


class PublishCounter(Protocol):
    """Counts publishes by channel and outcome (the ingestion metrics)."""

    @property
    def broker_published(self) -> Counter: ...


async def publish(
    broker: Broker, channel: str, payload: Any, *, metrics: PublishCounter | None = None
) -> bool:
    """Publish after commit; a broker outage is logged, never fails the run (data is stored).
    Returns whether the broker took the message."""
    outcome = "ok"
    try:
        await broker.publish(channel, encode(payload))
    except BrokerUnavailable as exc:
        outcome = "failed"
        log.warning(
            "broker publish failed; subscribers will replay", channel=channel, error=str(exc)
        )
    if metrics is not None:
        metrics.broker_published.labels(channel, outcome).inc()
    return outcome == "ok"


# ---- reading, through someone who follows the channel ----


class PriceListener(Protocol):
    """A reader of the "prices" channel that does not subscribe itself: whoever follows the
    channel for the process (the live hub) hands it every event. Neither method may block."""

    def prices_published(self, data: bytes) -> None:
        """One "prices" event, as received."""

    def prices_missed(self, reason: str) -> None:
        """Events may have been missed (the follower just subscribed, or got a Gap): what the
        listener keeps must be read again from the database."""
