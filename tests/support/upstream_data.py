"""Small, made-up payloads in the documented shapes of CoinGecko v3 and CoinPaprika v1.

Values are invented (not copied from any capture); field names, nesting and formats follow the
vendors' documentation: ISO times with `Z`, unix milliseconds in charts, nullable supplies.
"""

from __future__ import annotations

import math
from typing import Any

DEFAULT_UPDATED = "2024-05-01T12:00:00.000Z"
PAPRIKA_UPDATED = "2024-05-01T12:00:00Z"

# Error bodies as each vendor shapes them (texts abridged).
CG_RATE_LIMIT_BODY = {
    "status": {"error_code": 429, "error_message": "You've exceeded the Rate Limit."}
}
CG_TIME_RANGE_BODY = {
    "error": {
        "status": {
            "timestamp": "2024-05-01T12:00:00.000+00:00",
            "error_code": 10012,
            "error_message": "Your request exceeds the allowed time range. Public API users are "
            "limited to querying historical data within the past 365 days.",
        }
    }
}
CG_NOT_FOUND_BODY = {"error": "coin not found"}
CP_RATE_LIMIT_BODY = {"error": "you have reached maximum request limit"}
CP_NOT_FOUND_BODY = {"error": "id not found"}

_KNOWN = [("bitcoin", "btc", "Bitcoin", 63000.5), ("ethereum", "eth", "Ethereum", 3100.25)]


def market_coin(
    coin_id: str,
    symbol: str,
    name: str,
    price: float,
    *,
    rank: int = 1,
    last_updated: str = DEFAULT_UPDATED,
) -> dict[str, Any]:
    """One /coins/markets item with every documented field."""
    supply = 1_000_000.0 * rank
    return {
        "id": coin_id,
        "symbol": symbol,
        "name": name,
        "image": f"https://coin-images.coingecko.com/coins/images/{rank}/large/{coin_id}.png",
        "current_price": price,
        "market_cap": round(price * supply),
        "market_cap_rank": rank,
        "fully_diluted_valuation": None,
        "total_volume": round(price * supply / 20),
        "high_24h": price * 1.02,
        "low_24h": price * 0.97,
        "price_change_24h": price * 0.01,
        "price_change_percentage_24h": 1.0,
        "market_cap_change_24h": price * supply * 0.01,
        "market_cap_change_percentage_24h": 1.0,
        "circulating_supply": supply,
        "total_supply": supply,
        "max_supply": None,
        "ath": price * 1.5,
        "ath_change_percentage": -33.3,
        "ath_date": "2024-03-14T07:10:36.635Z",
        "atl": price / 100,
        "atl_change_percentage": 9900.0,
        "atl_date": "2015-10-20T00:00:00.000Z",
        "roi": None,
        "last_updated": last_updated,
    }


def market_coins(count: int, *, last_updated: str = DEFAULT_UPDATED) -> list[dict[str, Any]]:
    """`count` coins ordered by market cap: bitcoin, ethereum, then coin-0003, coin-0004, …"""
    coins = []
    for rank in range(1, count + 1):
        if rank <= len(_KNOWN):
            coin_id, symbol, name, price = _KNOWN[rank - 1]
        else:
            coin_id, symbol, name = f"coin-{rank:04d}", f"c{rank}", f"Coin {rank}"
            price = round(100.0 / rank, 8)
        coins.append(
            market_coin(coin_id, symbol, name, price, rank=rank, last_updated=last_updated)
        )
    return coins


def ticker(
    coin_id: str,
    symbol: str,
    name: str,
    price: float,
    *,
    rank: int = 1,
    last_updated: str = PAPRIKA_UPDATED,
) -> dict[str, Any]:
    """One /tickers?quotes=USD item."""
    supply = 1_000_000 * rank
    return {
        "id": coin_id,
        "name": name,
        "symbol": symbol,
        "rank": rank,
        "circulating_supply": supply,
        "total_supply": supply,
        "max_supply": 0,
        "beta_value": 0.9,
        "first_data_at": "2013-04-28T00:00:00Z",
        "last_updated": last_updated,
        "quotes": {
            "USD": {
                "price": price,
                "volume_24h": price * supply / 20,
                "volume_24h_change_24h": -3.1,
                "market_cap": round(price * supply),
                "market_cap_change_24h": 0.8,
                "percent_change_1h": 0.1,
                "percent_change_24h": 0.8,
                "percent_change_7d": 2.5,
                "percent_change_30d": -4.0,
                "percent_change_1y": 120.0,
                "ath_price": price * 1.5,
                "ath_date": "2024-03-14T07:10:00Z",
                "percent_from_price_ath": -33.3,
            }
        },
    }


def tickers(count: int, *, last_updated: str = PAPRIKA_UPDATED) -> list[dict[str, Any]]:
    """`count` tickers: btc-bitcoin, eth-ethereum, then c3-coin-3, …"""
    items = [
        ticker("btc-bitcoin", "BTC", "Bitcoin", 63010.1, rank=1, last_updated=last_updated),
        ticker("eth-ethereum", "ETH", "Ethereum", 3101.7, rank=2, last_updated=last_updated),
    ][:count]
    for rank in range(3, count + 1):
        price = round(100.0 / rank, 8)
        items.append(
            ticker(
                f"c{rank}-coin-{rank}",
                f"C{rank}",
                f"Coin {rank}",
                price,
                rank=rank,
                last_updated=last_updated,
            )
        )
    return items


def chart_step_seconds(span_seconds: float) -> int:
    """CoinGecko's auto-granularity: ≤ 1 day 5-minutely, ≤ 90 days hourly, else daily."""
    if span_seconds <= 86_400:
        return 300
    if span_seconds <= 90 * 86_400:
        return 3_600
    return 86_400


def chart_payload(from_s: int, to_s: int, *, base_price: float = 60_000.0) -> dict[str, Any]:
    """A /market_chart/range answer: grid points from `from_s` to `to_s` (unix seconds)."""
    step = chart_step_seconds(to_s - from_s)
    first = -(-from_s // step) * step  # the first grid point at or after from
    prices, caps, volumes = [], [], []
    for second in range(first, to_s + 1, step):
        price = round(base_price * (1 + 0.01 * math.sin(second / 7_200)), 6)
        prices.append([second * 1000, price])
        caps.append([second * 1000, round(price * 19_700_000, 2)])
        volumes.append([second * 1000, round(price * 400_000, 2)])
    return {"prices": prices, "market_caps": caps, "total_volumes": volumes}
