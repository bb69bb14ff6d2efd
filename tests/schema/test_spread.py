"""Asset.spread compares only prices observed close together: the sources' newest prices within
KASPARRO_SPREAD_WINDOW seconds of the newest of them. It says which window it used, which
sources it compared and which it left out as stale, and is null when fewer than two sources
are fresh."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from server.settings import Settings, SettingsError
from tests.schema.conftest import app_settings
from tests.support.asgi import graphql, running_app
from tests.support.seed import seed_assets, seed_prices

T2021 = datetime(2021, 7, 6, 0, 0, tzinfo=UTC)
T2023 = datetime(2023, 5, 2, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)

SPREAD = """
query($symbol: String!) {
  asset(symbol: $symbol) {
    spread {
      minPriceUsd maxPriceUsd absoluteUsd percent minSource maxSource sources
      windowSeconds from to staleSources
    }
  }
}
"""

Seed = list[tuple[str, datetime, str]]  # (source, observed at, price) of one coin


@pytest.fixture(params=["cache", "sql"])
def read_from(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def spread_of(
    engine: AsyncEngine, read_from: str, rows: Seed, **env: Any
) -> dict[str, Any] | None:
    """The spread of a coin with the prices `rows`, read from the price cache or from SQL."""
    ids = await seed_assets(engine, ("bitcoin", "BTC", "Bitcoin"))
    await seed_prices(engine, [(ids["bitcoin"], s, at, Decimal(p)) for s, at, p in rows])
    async with running_app(app_settings(engine, **env)) as (app, client):
        if read_from == "sql":
            await app.state.price_cache.stop()
        body = await graphql(client, SPREAD, {"symbol": "BTC"})
    assert "errors" not in body, body["errors"]
    spread: dict[str, Any] | None = body["data"]["asset"]["spread"]
    return spread


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


async def test_a_price_years_older_than_the_others_is_not_compared(
    engine: AsyncEngine, read_from: str
) -> None:
    spread = await spread_of(
        engine,
        read_from,
        [
            ("coingecko", T2023 - 2 * HOUR, "27000"),  # older price of a fresh source
            ("coingecko", T2023, "28500"),
            ("coinpaprika", T2023 - timedelta(minutes=10), "28400"),
            ("csv", T2021, "34000"),  # the newest CSV price is two years older
        ],
    )

    assert spread == {
        "minPriceUsd": "28400",
        "maxPriceUsd": "28500",
        "absoluteUsd": "100",
        "percent": "0.352113",
        "minSource": "coinpaprika",
        "maxSource": "coingecko",
        "sources": ["coingecko", "coinpaprika"],
        "windowSeconds": 3600,
        "from": iso(T2023 - HOUR),
        "to": iso(T2023),
        "staleSources": ["csv"],
    }


async def test_two_sources_years_apart_have_no_spread(engine: AsyncEngine, read_from: str) -> None:
    rows = [("coingecko", T2023, "28500"), ("csv", T2021, "34000"), ("csv", T2021 - HOUR, "1")]
    assert await spread_of(engine, read_from, rows) is None


async def test_history_alone_has_a_spread_among_prices_of_the_same_time(
    engine: AsyncEngine, read_from: str
) -> None:
    """The window is measured from the newest price, not from now: files of past prices are
    compared when their sources observed the coin at about the same time."""
    spread = await spread_of(
        engine, read_from, [("csv", T2021, "34000"), ("coingecko", T2021 + HOUR, "34340")]
    )

    assert spread is not None
    assert (spread["minSource"], spread["maxSource"], spread["percent"]) == (
        "csv",
        "coingecko",
        "1.000000",
    )
    assert (spread["from"], spread["to"], spread["staleSources"]) == (
        iso(T2021),
        iso(T2021 + HOUR),
        [],
    )


@pytest.mark.parametrize(
    ("apart", "compared"),
    [(HOUR, True), (HOUR + timedelta(microseconds=1), False)],
    ids=["at-the-edge", "just-outside"],
)
async def test_the_window_includes_its_edge(
    engine: AsyncEngine, read_from: str, apart: timedelta, compared: bool
) -> None:
    rows = [("coingecko", T2023, "100"), ("coinpaprika", T2023 - apart, "101")]
    spread = await spread_of(engine, read_from, rows)
    assert (spread is not None) is compared


async def test_the_window_is_a_setting(engine: AsyncEngine, read_from: str) -> None:
    rows = [("coingecko", T2023, "100"), ("coinpaprika", T2023 - timedelta(days=1), "110")]
    spread = await spread_of(engine, read_from, rows, KASPARRO_SPREAD_WINDOW="86400")

    assert spread is not None
    assert (spread["windowSeconds"], spread["from"], spread["sources"]) == (
        86400,
        iso(T2023 - timedelta(days=1)),
        ["coingecko", "coinpaprika"],
    )


@pytest.mark.parametrize("value", ["0", "-60", "an hour", "1.5"])
def test_a_window_that_is_not_a_positive_number_of_seconds_stops_start_up(value: str) -> None:
    with pytest.raises(SettingsError, match="KASPARRO_SPREAD_WINDOW"):
        Settings.load(_env_file=None, KASPARRO_SPREAD_WINDOW=value)


def test_the_default_window_is_an_hour() -> None:
    assert Settings.load(_env_file=None).spread_window == 3600
