"""What the exchange parsers produce: typed observations, control events and one error type.

Every parser turns one vendor message (a WebSocket frame or a REST page) into a list of
`Event`s. Prices and sizes are `Decimal`, never float: frames are decoded with `load_json`,
which reads JSON numbers as decimals (Coinbase candles and Kraken v2 send prices as JSON
numbers); a float that reaches a parser anyway (a body decoded elsewhere) is converted through
its shortest repr, as `workers.sources.normalize.to_decimal` does. Times are aware UTC.

A message that breaks the documented shape raises `ExchangeMessageError` naming the exchange,
the field and the raw value. A well-formed message of a kind the parsers do not use (an order
book update, a 24h ticker of another stream) becomes `Ignored` with its kind, so dropping it
is a visible decision, never an accident.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from workers.sources.exchanges.pairs import Pair


class ExchangeMessageError(ValueError):
    """A message that does not have the documented shape: which field, which raw value."""

    def __init__(self, exchange: str, field: str, raw: object, reason: str) -> None:
        self.exchange = exchange
        self.field = field
        self.raw = raw
        self.reason = reason
        super().__init__(f"{exchange}: field {field!r} = {_shown(raw)}: {reason}")


@dataclass(frozen=True, slots=True)
class Trade:
    """One executed trade. `trade_id` is the exchange's per-pair trade id (contiguous on all
    three exchanges); `sequence` is Coinbase's feed sequence (not contiguous per product)."""

    exchange: str
    pair: Pair
    trade_id: int
    time: datetime
    price: Decimal
    size: Decimal
    side: str | None = None  # taker side ("buy"/"sell") when the exchange says
    sequence: int | None = None


@dataclass(frozen=True, slots=True)
class Candle:
    """One OHLCV bucket starting at `open_time`; `closed` is False while it may still change.
    `volume` is in the base currency."""

    exchange: str
    pair: Pair
    open_time: datetime
    interval_seconds: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    closed: bool = True
    trade_count: int | None = None
    last_trade_id: int | None = None


@dataclass(frozen=True, slots=True)
class Ticker:
    """A last-trade price update (Coinbase `ticker`, Kraken v2 `ticker`)."""

    exchange: str
    pair: Pair
    price: Decimal
    time: datetime | None
    volume_24h: Decimal | None = None
    trade_id: int | None = None
    sequence: int | None = None


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A liveness message; Coinbase's carries the product's last trade id, for gap checks."""

    exchange: str
    pair: Pair | None = None
    last_trade_id: int | None = None
    sequence: int | None = None
    time: datetime | None = None


@dataclass(frozen=True, slots=True)
class Subscribed:
    """The exchange acknowledged a subscription (`detail` is the vendor's own wording)."""

    exchange: str
    detail: str


@dataclass(frozen=True, slots=True)
class Pong:
    """The answer to an application-level ping (Kraken v2 `{"method": "pong"}`)."""

    exchange: str
    req_id: int | None = None


@dataclass(frozen=True, slots=True)
class VendorError:
    """The exchange reported an error in-band (a refused subscription, a bad request)."""

    exchange: str
    message: str


@dataclass(frozen=True, slots=True)
class Ignored:
    """A well-formed message of a kind these parsers do not turn into observations."""

    exchange: str
    kind: str


Event = Trade | Candle | Ticker | Heartbeat | Subscribed | Pong | VendorError | Ignored
Observation = Trade | Candle | Ticker


def load_json(exchange: str, frame: str | bytes) -> Any:
    """Decode one frame or REST body, numbers with a fraction as `Decimal`."""
    try:
        return json.loads(frame, parse_float=Decimal)
    except (ValueError, TypeError) as exc:  # JSONDecodeError and bad UTF-8 are ValueErrors
        raise ExchangeMessageError(exchange, "(frame)", frame, f"not JSON ({exc})") from None


def dumps(message: Mapping[str, Any]) -> str:
    """A client message as compact JSON text (what the exchanges expect)."""
    return json.dumps(message, separators=(",", ":"))


# ---- field readers: each names the exchange, the field and the raw value when it fails ----


def obj(exchange: str, value: object, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ExchangeMessageError(exchange, field, value, "expected an object")
    return value


def arr(exchange: str, value: object, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise ExchangeMessageError(exchange, field, value, "expected an array")
    return value


def need(exchange: str, message: Mapping[str, Any], field: str) -> Any:
    if field not in message or message[field] is None:
        raise ExchangeMessageError(exchange, field, message.get(field), "missing")
    return message[field]


def text(exchange: str, value: object, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ExchangeMessageError(exchange, field, value, "expected a non-empty string")
    return value


def decimal(exchange: str, value: object, field: str, *, positive: bool = False) -> Decimal:
    """An exact decimal from a JSON string, Decimal, int or float (through its repr)."""
    if isinstance(value, bool):
        raise ExchangeMessageError(exchange, field, value, "expected a decimal number")
    try:
        if isinstance(value, Decimal | int):
            result = Decimal(value)
        elif isinstance(value, float):
            result = Decimal(repr(value))
        elif isinstance(value, str):
            result = Decimal(value.strip())
        else:
            raise InvalidOperation
    except (InvalidOperation, ValueError):
        raise ExchangeMessageError(exchange, field, value, "expected a decimal number") from None
    if not result.is_finite():
        raise ExchangeMessageError(exchange, field, value, "expected a finite number")
    if positive and result <= 0:
        raise ExchangeMessageError(exchange, field, value, "expected a positive number")
    if result < 0:
        raise ExchangeMessageError(exchange, field, value, "expected a non-negative number")
    return result


def integer(exchange: str, value: object, field: str) -> int:
    """A non-negative integer id or count (a JSON integer, or its decimal string)."""
    if isinstance(value, bool):
        raise ExchangeMessageError(exchange, field, value, "expected an integer")
    if isinstance(value, int):
        result = value
    elif isinstance(value, str) and value.strip().isdigit():
        result = int(value.strip())
    elif isinstance(value, Decimal) and value == value.to_integral_value():
        result = int(value)
    else:
        raise ExchangeMessageError(exchange, field, value, "expected an integer")
    if result < 0:
        raise ExchangeMessageError(exchange, field, value, "expected a non-negative integer")
    return result


def unix_ms(exchange: str, value: object, field: str) -> datetime:
    """A UTC time from integer unix milliseconds (Binance)."""
    millis = integer(exchange, value, field)
    return _from_unix(exchange, Decimal(millis) / 1000, value, field)


def unix_seconds(exchange: str, value: object, field: str) -> datetime:
    """A UTC time from unix seconds, whole or fractional (Kraken REST, Coinbase candles)."""
    seconds = decimal(exchange, value, field)
    return _from_unix(exchange, seconds, value, field)


def rfc3339(exchange: str, value: object, field: str) -> datetime:
    """A UTC time from RFC 3339 text with `Z` or an offset (Coinbase, Kraken v2)."""
    raw = text(exchange, value, field).strip()
    iso = raw[:-1] + "+00:00" if raw.endswith(("Z", "z")) else raw
    try:
        parsed = datetime.fromisoformat(iso)
    except ValueError:
        raise ExchangeMessageError(exchange, field, value, "expected an RFC 3339 time") from None
    if parsed.tzinfo is None:
        raise ExchangeMessageError(exchange, field, value, "time has no UTC offset")
    return parsed.astimezone(UTC)


def _from_unix(exchange: str, seconds: Decimal, raw: object, field: str) -> datetime:
    whole = int(seconds)
    micros = int((seconds - whole) * 1_000_000)  # truncated: never rounds into the next second
    try:
        return datetime.fromtimestamp(whole, tz=UTC) + timedelta(microseconds=micros)
    except (OverflowError, OSError, ValueError):
        raise ExchangeMessageError(exchange, field, raw, "time out of range") from None


def _shown(raw: object, limit: int = 120) -> str:
    shown = repr(raw)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"
