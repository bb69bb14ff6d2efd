"""One CSV row (header -> raw string) into a PriceRecord, with the file's layout precomputed.

A `RowParser` is built once per file layout, so a row costs dictionary look-ups and the
normalize coercions, never header matching. Assets are cached per distinct symbol/name pair.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

from workers.pipeline.normalize import clean_text, to_decimal, to_utc
from workers.sources.base import PriceRecord, RecordError
from workers.sources.csv_columns import USD_QUOTES
from workers.sources.csv_layout import CsvLayout, split_pair

OPTIONAL_FIELDS = ("open_usd", "high_usd", "low_usd", "volume_24h_usd", "market_cap_usd")
_ASSET_CACHE_LIMIT = 100_000
# The fields every record is given (PriceRecord(**fields) marks them set), besides the optional
# numbers the file has a column for.
_GIVEN_FIELDS = frozenset(
    {"source_asset_id", "symbol", "name", "observed_at", "price_usd", "extra"}
)


class RowAsset(NamedTuple):
    source_asset_id: str
    symbol: str | None
    name: str | None
    quote: str | None  # a stablecoin the prices are really in; None for USD


def source_asset_id(symbol: str | None, name: str | None) -> str:
    """'BTC' from a symbol, 'bitcoin' from a name, 'UNI:uniswap' from both (symbols collide)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") if name else ""
    if symbol and slug:
        return f"{symbol}:{slug}"
    return symbol or slug


def cell_decimal(value: object, *, field: str = "value") -> Decimal | None:
    """to_decimal, with a fast path for a cell that is a plain finite number."""
    if type(value) is str:
        try:
            result = Decimal(value)
        except InvalidOperation:
            return to_decimal(value, field=field)
        if result.is_finite():
            return result
    return to_decimal(value, field=field)


def comma_decimal(value: object, *, field: str = "value") -> Decimal | None:
    """to_decimal for '1.234,56' style numbers."""
    if isinstance(value, str):
        value = value.replace(".", "").replace(",", ".")
    return to_decimal(value, field=field)


def cell_time(value: object, *, field: str = "time") -> datetime | None:
    """to_utc with naive times as UTC, with a fast path for ISO-8601 cells ("2013-04-29 ...")."""
    if type(value) is str and value[4:5] == "-":
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return to_utc(value, field=field, naive_is_utc=True)
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    return to_utc(value, field=field, naive_is_utc=True)


def validated_record(fields: dict[str, Any], fields_set: set[str]) -> PriceRecord:
    """A PriceRecord from every field's value, each already checked and of its type.

    RowParser checks each value as it converts it (aware UTC time, finite Decimals), so
    validating the record again only repeats that, and it was the largest cost of a row.
    `PriceRecord.model_construct` skips validation but loops over the fields in Python, which
    costs more still; this does what it does, for a model without aliases, defaults to fill,
    private attributes or post-init hook (else the record is validated).
    """
    if not _CONSTRUCTIBLE:
        return PriceRecord(**fields)
    record = _new_record(PriceRecord)
    _set(record, "__dict__", fields)
    _set(record, "__pydantic_fields_set__", fields_set)
    _set(record, "__pydantic_extra__", None)
    _set(record, "__pydantic_private__", None)
    return record


_new_record = PriceRecord.__new__
_set = object.__setattr__
_CONSTRUCTIBLE = not (
    PriceRecord.__pydantic_post_init__
    or PriceRecord.__private_attributes__
    or any(f.alias or f.validation_alias for f in PriceRecord.model_fields.values())
)


class RowParser:
    """Parses the rows of files that share one layout."""

    def __init__(self, layout: CsvLayout) -> None:
        columns = layout.columns
        self.layout = layout
        self.width = len(layout.headers)
        self.time_key = columns["observed_at"]
        self.price_key = columns["price_usd"]
        self.optional = tuple((f, columns[f]) for f in OPTIONAL_FIELDS if f in columns)
        self.symbol_key = columns.get("symbol")
        self.name_key = columns.get("name")
        self.extra_keys = layout.extra_headers
        self.number: Callable[..., Decimal | None] = (
            comma_decimal if layout.decimal_comma else cell_decimal
        )
        self.base_extra: dict[str, Any] = {}
        if len(layout.mapping.volume_candidates) > 1 and "volume_24h_usd" in columns:
            self.base_extra["volume_column"] = columns["volume_24h_usd"]
        self._assets: dict[tuple[str | None, str | None], RowAsset | str] = {}
        self._fields_set = _GIVEN_FIELDS | {f for f, _ in self.optional}

    def parse(self, payload: Mapping[str, Any]) -> PriceRecord:
        """The row as a validated price; RecordError with the reason otherwise."""
        get = payload.get
        if len(payload) > self.width:
            raise RecordError(f"row has {len(payload)} cells, the header has {self.width}")
        asset = self._asset(payload)
        fields: dict[str, Any] = {
            "source_asset_id": asset.source_asset_id,
            "symbol": asset.symbol,
            "name": asset.name,
            "observed_at": None,
            "price_usd": None,
            "market_cap_usd": None,
            "volume_24h_usd": None,
            "open_usd": None,
            "high_usd": None,
            "low_usd": None,
            "extra": None,
        }
        self._values(get, fields)
        extra = {key: value for key in self.extra_keys if (value := get(key))}
        if self.base_extra:
            extra.update(self.base_extra)
        if asset.quote:
            extra["quote"] = asset.quote
        fields["extra"] = extra
        return validated_record(fields, set(self._fields_set))

    def _values(self, get: Callable[[str], Any], fields: dict[str, Any]) -> None:
        """The time, the price and the optional numbers of the row into `fields`."""
        number = self.number
        try:
            observed = fields["observed_at"] = cell_time(get(self.time_key), field=self.time_key)
            price = fields["price_usd"] = number(get(self.price_key), field=self.price_key)
            for field_name, key in self.optional:
                value = fields[field_name] = number(get(key), field=key)
                if value is not None and value < 0:
                    raise RecordError(f"{key}: {value} is negative")
        except ValueError as exc:
            raise RecordError(str(exc)) from None
        if observed is None:
            raise RecordError(f"{self.time_key}: no time ({get(self.time_key)!r})")
        if price is None:
            raise RecordError(f"{self.price_key}: no price ({get(self.price_key)!r})")
        if price <= 0:
            raise RecordError(f"{self.price_key}: price {price} is not positive")

    def _asset(self, payload: Mapping[str, Any]) -> RowAsset:
        key = (
            payload.get(self.symbol_key) if self.symbol_key else None,
            payload.get(self.name_key) if self.name_key else None,
        )
        found = self._assets.get(key)
        if found is None:
            found = self._resolve(*key)
            if len(self._assets) < _ASSET_CACHE_LIMIT:
                self._assets[key] = found
        if isinstance(found, str):
            raise RecordError(found)
        return found

    def _resolve(self, raw_symbol: str | None, raw_name: str | None) -> RowAsset | str:
        """The row's coin, or the reason it has none."""
        layout = self.layout
        if layout.asset is not None:  # the file has no symbol/name column
            symbol, name, quote = layout.asset.symbol, layout.asset.name, layout.asset.quote
        else:
            symbol, name, quote = clean_text(raw_symbol), clean_text(raw_name), layout.quote
            if symbol is None and name is None:
                columns = [k for k in (self.symbol_key, self.name_key) if k]
                return f"no asset: {' and '.join(columns)} empty"
        if symbol is not None:
            symbol, pair_quote = split_pair(symbol, layout.quote)
            if pair_quote is not None and pair_quote not in USD_QUOTES:
                return f"{raw_symbol}: quoted in {pair_quote}, not USD"
            quote = pair_quote or quote
        quote = None if quote in (None, "USD") else quote
        return RowAsset(source_asset_id(symbol, name), symbol, name, quote)
