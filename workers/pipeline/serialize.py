"""A batch serialized for writing: what writing it needs that costs Python time but no database.

The raw items as canonical JSON and its hash, the batch's distinct coins, and on PostgreSQL the
staging rows its prices are COPYed from (`postgres_copy.Staging`). The runner makes it in a
worker thread, a chunk of items at a time, while the previous batch is being written.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from workers.pipeline.identity import CoinRef
from workers.pipeline.postgres_copy import Staging
from workers.sources.base import Batch, PriceRecord, SourceItem


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def content_hash(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Serialized:
    """What writing a batch needs that costs Python time but no database."""

    raw_json: str  # canonical JSON of the items' payloads (stored on PostgreSQL as it is)
    raw_hash: str  # its sha256
    count: int  # parsed records
    coins: list[CoinRef]  # their distinct coins, first seen first
    staging: Staging | None  # PostgreSQL: the staging rows of the records


def coin_ref(source: str, record: PriceRecord) -> CoinRef:
    """The coin of `record` as identity resolution reads it, with the record as an observation
    of it (for market agreement)."""
    return CoinRef(
        source,
        record.source_asset_id,
        record.symbol,
        record.name,
        record.price_usd,
        record.market_cap_usd,
        record.observed_at,
    )


class Serializer:
    """Builds a batch's `Serialized` from its items in order, a chunk at a time (so that the
    thread doing it can let the event loop run between chunks)."""

    def __init__(self, *, source: str, postgres: bool) -> None:
        self.source = source
        self._json: list[str] = []
        self._count = 0
        self._coins: dict[str, CoinRef] = {}
        self._staging = Staging() if postgres else None

    def add(self, items: list[SourceItem], parsed: list[tuple[SourceItem, PriceRecord]]) -> None:
        """The next `items` of the batch, and those of them that parsed."""
        if items:  # canonical_json of a list, without its brackets: items joined by ","
            payloads = [_as_dict(item.payload) for item in items]
            self._json.append(canonical_json(payloads)[1:-1])
        coins = self._coins
        for _, r in parsed:
            if r.source_asset_id not in coins:
                coins[r.source_asset_id] = coin_ref(self.source, r)
        if self._staging is not None:
            self._staging.add(parsed, self._count)
        self._count += len(parsed)

    def finish(self) -> Serialized:
        raw_json = f"[{','.join(self._json)}]"
        raw_hash = hashlib.sha256(raw_json.encode()).hexdigest()
        coins = list(self._coins.values())
        return Serialized(raw_json, raw_hash, self._count, coins, self._staging)


def serialize(
    batch: Batch, parsed: list[tuple[SourceItem, PriceRecord]], *, source: str, postgres: bool
) -> Serialized:
    """The whole batch's `Serialized` at once."""
    serializer = Serializer(source=source, postgres=postgres)
    serializer.add(batch.items, parsed)
    return serializer.finish()


def _as_dict(payload: Mapping[str, Any]) -> dict[str, Any]:
    return payload if type(payload) is dict else dict(payload)  # json serializes dicts only
