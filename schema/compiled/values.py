"""What generated code calls: the scalars' serializers, exactly as the executor applies them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from schema.pagination import PageInfo
from schema.prices.types import ingest_cursor
from schema.scalars import serialize_datetime, serialize_decimal


def optional_datetime(value: datetime | None) -> str | None:
    return None if value is None else serialize_datetime(value)


def optional_decimal(value: Decimal | None) -> str | None:
    return None if value is None else serialize_decimal(value)


def optional_id(value: int | None) -> str | None:
    return None if value is None else str(value)


NAMESPACE: dict[str, Any] = {
    "dt": serialize_datetime,
    "odt": optional_datetime,
    "dec": serialize_decimal,
    "odec": optional_decimal,
    "oid": optional_id,
    "ingest_cursor": ingest_cursor,
}


@dataclass(slots=True)
class PageValue:
    """A connection's loaded page: rows in page order, pageInfo, the edge cursor of a row, and
    totalCount when selected."""

    rows: list[Any]
    page_info: PageInfo
    edge_cursor: Callable[..., str]
    total_count: int | None = None
