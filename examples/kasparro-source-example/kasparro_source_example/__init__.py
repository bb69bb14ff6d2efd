"""An example Kasparro source: prices from a JSON file named by KASPARRO_EXAMPLE_FILE.

The file holds a list of observations:

    [{"id": "bitcoin", "symbol": "BTC", "name": "Bitcoin",
      "price": "64000.5", "time": "2024-05-01T12:00:00Z"}, ...]

The checkpoint is `{"watermark": newest time stored}`: a run reads only what is newer, and a
price already stored is never stored twice (prices are unique by asset, source and time).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from workers.sources.base import (
    Batch,
    ExpectedField,
    PriceRecord,
    RecordError,
    SourceError,
    SourceItem,
)
from workers.sources.normalize import to_decimal, to_utc
from workers.sources.plugin import SourcePlugin

FILE_VARIABLE = "KASPARRO_EXAMPLE_FILE"

FIELDS = (
    ExpectedField("id", "text", required=True),
    ExpectedField("symbol", "text"),
    ExpectedField("name", "text"),
    ExpectedField("price", "number", required=True),
    ExpectedField("time", "time", required=True),
)


class ExampleSource:
    """Every observation of the file newer than the checkpoint, in one batch."""

    name: ClassVar[str] = "example"
    expected_fields: ClassVar[tuple[ExpectedField, ...]] = FIELDS
    run_metrics: ClassVar[tuple[str, ...]] = ("error_rate",)

    def __init__(self, path: Path) -> None:
        self.path = path

    async def batches(self, checkpoint: Mapping[str, Any] | None) -> AsyncIterator[Batch]:
        try:
            items = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            raise SourceError(f"{FILE_VARIABLE}={self.path}: {exc}") from exc
        if not isinstance(items, list):
            raise SourceError(f"{FILE_VARIABLE}={self.path}: not a JSON list")
        previous = (checkpoint or {}).get("watermark")
        watermark = to_utc(previous) if previous else None
        newer = []
        for number, item in enumerate(items, 1):
            at = _time(item)
            if watermark is None or at is None or at > watermark:
                newer.append(SourceItem(payload=item, origin=f"{self.path.name}:{number}"))
        times = [at for at in map(_time, items) if at is not None]
        newest = max([*times, *([watermark] if watermark else [])], default=None)
        yield Batch(
            items=newer,
            checkpoint={"watermark": newest.isoformat() if newest else None},
        )

    def parse(self, item: SourceItem) -> PriceRecord:
        payload = item.payload
        if not payload.get("id") or payload.get("price") is None or not payload.get("time"):
            raise RecordError("needs id, price and time")
        try:
            return PriceRecord(
                source_asset_id=str(payload["id"]),
                symbol=payload.get("symbol"),
                name=payload.get("name"),
                observed_at=to_utc(payload["time"]),
                price_usd=to_decimal(payload["price"]),
            )
        except (TypeError, ValueError) as exc:
            raise RecordError(str(exc)) from None


def _time(item: Any) -> Any:
    try:
        return to_utc(item["time"]) if isinstance(item, Mapping) and item.get("time") else None
    except (TypeError, ValueError):
        return None


def build(runtime: Any, options: Mapping[str, Any]) -> ExampleSource:
    """The source for one run: the file `--file` names, else KASPARRO_EXAMPLE_FILE."""
    path = options.get("file") or os.environ.get(FILE_VARIABLE)
    if not path:
        raise ValueError(f"the example source reads the file {FILE_VARIABLE} names; set it")
    return ExampleSource(Path(path))


plugin = SourcePlugin(
    name="example",
    description="Prices from the JSON file KASPARRO_EXAMPLE_FILE names (an example plugin).",
    build=build,
    settings=(FILE_VARIABLE,),
    checkpoint="one stream: {watermark: the newest observation time read}",
    expected_fields=FIELDS,
)
