"""One CSV row (header -> raw string) into a PriceRecord, with the file's layout precomputed.

A `RowParser` is built once per file layout, so a row costs dictionary look-ups and the cell
conversions of values.py, never header matching. Assets are cached per distinct symbol/name pair.

What a bad row costs:
- no time, no price, a price that is not a positive number, a time later than now +
  FUTURE_TOLERANCE, or no coin: the row is refused (RecordError; the pipeline quarantines it with
  the message as its reason);
- a bad optional number (open, high, low, volume or market cap that is not a number, negative,
  or has a control character inside): the price is kept with that field null, and the problem
  is recorded in the price's `extra` under PROBLEMS_KEY, by the file's header:
  `{"_problems": {"Volume": "'abc' is not a number"}}`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from workers.sources.base import PriceRecord, RecordError
from workers.sources.csv.columns import USD_QUOTES
from workers.sources.csv.layout import CsvLayout, coin_symbol, split_pair
from workers.sources.csv.values import (
    NumberParser,
    cell_decimal,
    clean_cell,
    comma_decimal,
    shown,
    time_parser,
)

OPTIONAL_FIELDS = ("open_usd", "high_usd", "low_usd", "volume_24h_usd", "market_cap_usd")
# Rows dated later than now + this are refused: clocks and time zones differ by hours, not days.
FUTURE_TOLERANCE = timedelta(days=1)
PROBLEMS_KEY = "_problems"
# The payload of a line the csv module could not read (a field over its size limit): the reason.
UNREADABLE_KEY = "_unreadable"
_ASSET_CACHE_LIMIT = 100_000
# The fields every record is given (PriceRecord(**fields) marks them set), besides the optional
# numbers the file has a column for.
_GIVEN_FIELDS = frozenset(
    {"source_asset_id", "symbol", "name", "observed_at", "price_usd", "extra"}
)
_CONVERSION_ERRORS = (ValueError, ArithmeticError, TypeError)


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

    def __init__(self, layout: CsvLayout, *, now: datetime | None = None) -> None:
        columns = layout.columns
        self.layout = layout
        self.width = len(layout.headers)
        self.time_key = columns["observed_at"]
        self.price_key = columns["price_usd"]
        self.optional = tuple((f, columns[f]) for f in OPTIONAL_FIELDS if f in columns)
        self.symbol_key = columns.get("symbol")
        self.name_key = columns.get("name")
        self.extra_keys = layout.extra_headers
        self.number: NumberParser = comma_decimal if layout.decimal_comma else cell_decimal
        self.time = time_parser(layout.time_format)
        # The latest time a row may have; fixed per file read (a run reads a file in minutes).
        self.latest = (now or datetime.now(UTC)) + FUTURE_TOLERANCE
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
        try:
            asset = self._asset(payload)
        except RecordError:
            refuse_unreadable(payload)
            raise
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
        problems = self._values(payload, fields)
        extra = {key: value for key in self.extra_keys if (value := get(key))}
        if self.base_extra:
            extra.update(self.base_extra)
        if asset.quote:
            extra["quote"] = asset.quote
        if problems:
            extra[PROBLEMS_KEY] = problems
        fields["extra"] = extra
        return validated_record(fields, set(self._fields_set))

    def _values(self, payload: Mapping[str, Any], fields: dict[str, Any]) -> dict[str, str] | None:
        """The row's time, price and optional numbers into `fields`. RecordError when the time
        or the price is missing or bad; a bad optional number stays null, its problem returned
        (by header)."""
        get, time_key, price_key, number = payload.get, self.time_key, self.price_key, self.number
        try:
            observed = fields["observed_at"] = self.time(get(time_key), time_key)
            price = fields["price_usd"] = number(get(price_key), field=price_key)
        except _CONVERSION_ERRORS as exc:
            raise RecordError(str(exc)) from None
        if observed is None:
            refuse_unreadable(payload)
            raise RecordError(f"{time_key}: no time ({shown(get(time_key))})")
        if observed > self.latest:
            raise RecordError(
                f"{time_key}: {observed.isoformat()} is in the future (later than now + "
                f"{FUTURE_TOLERANCE.days} day)"
            )
        if price is None:
            raise RecordError(f"{price_key}: no price ({shown(get(price_key))})")
        if price.is_signed() or not price:
            raise RecordError(f"{price_key}: price {price} is not positive")
        problems: dict[str, str] | None = None
        for field_name, key in self.optional:
            try:
                value = number(get(key), field=key)
            except _CONVERSION_ERRORS as exc:
                problems = problems or {}
                problems[key] = str(exc).removeprefix(f"{key}: ")
                continue
            if value is not None and value.is_signed() and value:
                problems = problems or {}
                problems[key] = f"{value} is negative"
                continue
            fields[field_name] = value
        return problems

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

    def _resolve(self, raw_symbol: object, raw_name: object) -> RowAsset | str:
        """The row's coin, or the reason it has none. A name that is a number is an id, not a
        coin's name; a row that names no coin is the file name's coin, when it names one."""
        layout = self.layout
        if layout.asset is not None:  # the file has no symbol/name column
            symbol, name, quote = layout.asset.symbol, layout.asset.name, layout.asset.quote
        else:
            try:
                symbol = _text(raw_symbol, self.symbol_key)
                name = _text(raw_name, self.name_key)
            except ValueError as exc:
                return str(exc)
            quote = layout.quote
            if name is not None and name.isdigit():
                name = None
            if symbol is None and name is None:
                fallback = layout.file_asset
                if fallback is None:
                    columns = [k for k in (self.symbol_key, self.name_key) if k]
                    return f"no asset: {' and '.join(columns)} empty"
                symbol, name = fallback.symbol, fallback.name
                quote = quote or fallback.quote
        if symbol is not None:
            symbol, pair_quote = split_pair(symbol, layout.quote)
            if pair_quote is not None and pair_quote not in USD_QUOTES:
                return f"{raw_symbol}: quoted in {pair_quote}, not USD"
            symbol = coin_symbol(symbol)
            quote = pair_quote or quote
        quote = None if quote in (None, "USD") else quote
        return RowAsset(source_asset_id(symbol, name), symbol, name, quote)


def _text(value: object, field: str | None) -> str | None:
    """A symbol or name cell without edge whitespace and control characters; None when empty."""
    if value is None:
        return None
    text = clean_cell(str(value), field=field or "value")
    return text or None


def refuse_unreadable(payload: Mapping[str, Any]) -> None:
    """RecordError with the reason for the item of a line the csv module could not read."""
    if UNREADABLE_KEY in payload and len(payload) == 1:
        raise RecordError(str(payload[UNREADABLE_KEY]))
