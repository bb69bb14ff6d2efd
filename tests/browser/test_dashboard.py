"""/dashboard in a real browser cut off from everything but the service: it shows the prices an
ingestion stored, a new price arrives through the subscription without a reload, runs and
sources are listed, a candle chart is drawn, a streaming source's observations tick in one by
one, and a lost server is said so and recovered from."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from playwright.async_api import Browser, Page, ViewportSize, WebSocketRoute, expect
from pydantic import SecretStr
from sqlalchemy import insert, select

from server.broker.channels import PRICES_CHANNEL, publish
from server.tables import assets, prices
from tests.browser.offline import DESKTOP, PHONE, Offline, offline_context
from tests.browser.service import Service, running_service, service_settings
from tests.support.fake_exchange import FakeExchange
from tests.support.fake_upstream import FakeUpstream, Fault, Route
from tests.support.seed import seed_run
from workers.runtime import open_runtime
from workers.streams.lease import STREAM_TRIGGER
from workers.streams.runner import StreamRunner

BTC_PRICE = '#prices tr[data-symbol="BTC"] [data-role="price"]'


def move_bitcoin(fake: FakeUpstream, price: float, minute: int) -> None:
    """The upstream now quotes bitcoin at `price`, observed `minute` minutes past 12:00."""
    coins = copy.deepcopy(fake.coins)
    coins[0].update(current_price=price, last_updated=f"2024-05-01T12:{minute:02d}:00.000Z")
    fake.coins = coins


async def open_dashboard(
    browser: Browser, service: Service, viewport: ViewportSize = DESKTOP
) -> Offline:
    offline = await offline_context(browser, service, viewport)
    page = await offline.context.new_page()
    await page.goto(f"{service.origin}/dashboard")
    return offline


def page_of(offline: Offline) -> Page:
    return offline.context.pages[0]


async def stream_ticks(
    service: Service, run_id: int, symbol: str, start: datetime, *values: str
) -> None:
    """Observations of `symbol` from the `binance` stream, one a second from `start`, each
    committed and published on its own as a stream's micro-batch is."""
    assert service.app is not None
    engine, broker = service.app.state.engine, service.app.state.broker
    async with engine.connect() as conn:
        asset_id = await conn.scalar(select(assets.c.id).where(assets.c.symbol == symbol))
    assert asset_id is not None, f"no asset {symbol}"
    for index, value in enumerate(values):
        async with engine.begin() as conn:
            price_id = await conn.scalar(
                insert(prices)
                .values(
                    asset_id=asset_id,
                    source="binance",
                    observed_at=start + timedelta(seconds=index),
                    price_usd=Decimal(value),
                    run_id=run_id,
                )
                .returning(prices.c.id)
            )
        event = {"run_id": run_id, "source": "binance", "prices": [{"id": price_id}]}
        await publish(broker, PRICES_CHANNEL, event)


async def test_a_new_price_appears_live_without_reload(
    browser: Browser, service: Service, fake: FakeUpstream, artifacts: Path
) -> None:
    first = await service.ingest()
    assert first.status == "succeeded", first
    offline = await open_dashboard(browser, service)
    page = page_of(offline)

    await expect(page.locator(BTC_PRICE)).to_have_text("$63,000.50")
    await expect(page.locator(BTC_PRICE)).to_have_attribute("data-price", "63000.5")
    await expect(page.locator("#live")).to_have_text("Live")
    await page.evaluate("window.loadedOnce = true")

    move_bitcoin(fake, 64123.25, minute=5)
    second = await service.ingest()
    assert second.status == "succeeded", second

    await expect(page.locator(BTC_PRICE)).to_have_text("$64,123.25")
    await expect(page.locator('#feed li[data-symbol="BTC"]').first).to_contain_text("$64,123.25")
    assert await page.evaluate("window.loadedOnce") is True, "the page was reloaded"

    # Runs (with counts), sources (with checkpoint and last success) and a candle chart.
    await expect(page.locator("#runs tbody tr")).to_have_count(2)
    await expect(page.locator("#runs tbody tr").first.locator(".badge")).to_have_text("succeeded")
    coingecko = page.locator('#sources tr[data-source="coingecko"]')
    await expect(coingecko.locator(".checkpoint")).not_to_contain_text("none yet")
    await expect(coingecko.locator("td.when").first.locator("time")).to_have_count(1)
    chart = page.locator('#charts figure[data-symbol="BTC"]')
    await expect(chart.locator("svg .candle").first).to_be_visible()
    await expect(chart.locator(".close")).to_have_text("$64,123.25")
    await expect(page.locator("#banner")).to_be_hidden()

    await page.screenshot(path=artifacts / "dashboard.png", full_page=True)
    assert offline.blocked == [], "the dashboard asked another host"
    assert offline.failed == []
    await offline.context.close()


async def test_fits_a_phone(browser: Browser, service: Service, artifacts: Path) -> None:
    await service.ingest()
    offline = await open_dashboard(browser, service, viewport=PHONE)
    page = page_of(offline)

    await expect(page.locator(BTC_PRICE)).to_have_text("$63,000.50")
    await expect(page.locator("#live")).to_have_text("Live")
    await expect(page.locator('#charts figure[data-symbol="BTC"] svg .candle')).to_have_count(1)
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page is {width}px wide on a {PHONE['width']}px screen"

    await page.screenshot(path=artifacts / "dashboard-phone.png", full_page=True)
    assert offline.blocked == []
    await offline.context.close()


async def test_says_when_the_server_is_gone_and_recovers_by_itself(
    browser: Browser, service: Service, fake: FakeUpstream, artifacts: Path
) -> None:
    await service.ingest()
    offline = await open_dashboard(browser, service)
    page = page_of(offline)
    await expect(page.locator("#live")).to_have_text("Live")

    await service.stop()
    banner = page.locator("#banner")
    await expect(banner).to_be_visible(timeout=15_000)
    await expect(banner).to_contain_text("Can't reach the server")
    await expect(page.locator("#live")).to_contain_text("Reconnecting")
    await page.screenshot(path=artifacts / "dashboard-server-gone.png", full_page=True)

    await service.start()
    await expect(page.locator("#live")).to_have_text("Live", timeout=30_000)
    await expect(banner).to_be_hidden(timeout=30_000)

    move_bitcoin(fake, 65000.75, minute=10)
    assert (await service.ingest()).status == "succeeded"
    await expect(page.locator(BTC_PRICE)).to_have_text("$65,000.75")
    chart = page.locator('#charts figure[data-symbol="BTC"]')
    await expect(chart.locator(".close")).to_have_text("$65,000.75")
    assert offline.blocked == []
    await offline.context.close()


async def test_says_when_the_subscription_is_unreachable_and_resumes_by_itself(
    browser: Browser, service: Service, fake: FakeUpstream, artifacts: Path
) -> None:
    await service.ingest()
    offline = await offline_context(browser, service, DESKTOP)
    refused = True

    async def gate(socket: WebSocketRoute) -> None:
        """The WebSocket endpoint is unreachable while `refused`; HTTP is not."""
        if refused:
            await socket.close(code=1013, reason="try again later")
        else:
            socket.connect_to_server()

    await offline.context.route_web_socket(re.compile(r"/graphql$"), gate)
    page = await offline.context.new_page()
    await page.goto(f"{service.origin}/dashboard")

    await expect(page.locator(BTC_PRICE)).to_have_text("$63,000.50")
    banner = page.locator("#banner")
    await expect(banner).to_contain_text("price subscription is unreachable", timeout=15_000)
    await expect(page.locator("#live")).to_contain_text("Reconnecting")
    await page.screenshot(path=artifacts / "dashboard-subscription-gone.png")

    refused = False
    await expect(page.locator("#live")).to_have_text("Live", timeout=30_000)
    await expect(banner).to_be_hidden()
    move_bitcoin(fake, 66000.5, minute=15)
    assert (await service.ingest()).status == "succeeded"
    await expect(page.locator(BTC_PRICE)).to_have_text("$66,000.50")
    assert offline.blocked == []
    await offline.context.close()


async def test_shows_the_drift_and_anomalies_runs_found(
    browser: Browser, service: Service, fake: FakeUpstream, artifacts: Path
) -> None:
    fake.inject(Route.MARKETS, Fault.rename("current_price", "currentPrice"))
    tickers = copy.deepcopy(fake.tickers)
    tickers[0]["quotes"]["USD"]["price"] = 630101.0  # bitcoin at 10x CoinGecko's price
    fake.tickers = tickers
    assert (await service.ingest("coingecko")).status == "succeeded"
    assert (await service.ingest("coinpaprika")).status == "succeeded"
    offline = await open_dashboard(browser, service)
    page = page_of(offline)

    drift = page.locator("#drift tbody tr")
    await expect(drift).to_have_count(1)
    await expect(drift).to_contain_text("currentPrice → current_price")
    await expect(drift).to_contain_text("auto_mapped")
    divergence = page.locator("#anomalies tbody tr", has_text="price_divergence").first
    await expect(divergence).to_contain_text("BTC")
    btc_sources = page.locator('#prices tr[data-symbol="BTC"] .chip')
    await expect(btc_sources).to_have_count(2)
    paprika = page.locator('#sources tr[data-source="coinpaprika"]')
    await expect(paprika.locator("td.when time")).to_have_count(1)

    await page.screenshot(path=artifacts / "dashboard-quality.png", full_page=True)
    assert offline.blocked == []
    assert offline.failed == []
    await offline.context.close()


async def test_a_server_requiring_a_read_key_is_read_with_the_key_given_once(
    browser: Browser, fake: FakeUpstream, tmp_path: Path
) -> None:
    """Without the key the page says how to give it; with #key=… it loads prices, goes live
    (the key travels in connection_init), and the key leaves the address bar."""
    settings = service_settings(tmp_path / "kasparro.db", fake).model_copy(
        update={"require_read_key": True, "api_keys": [SecretStr("r3ad-key")]}
    )
    async with running_service(settings) as service:
        await service.ingest()
        offline = await offline_context(browser, service, DESKTOP)
        page = await offline.context.new_page()
        await page.goto(f"{service.origin}/dashboard")
        await expect(page.locator("#banner")).to_contain_text("requires an API key")

        await page.goto(f"{service.origin}/dashboard#key=r3ad-key")
        await page.reload()
        await expect(page.locator(BTC_PRICE)).to_have_text("$63,000.50")
        await expect(page.locator("#live")).to_have_text("Live")
        assert "key" not in page.url
        move_bitcoin(fake, 64500.5, minute=7)
        assert (await service.ingest()).status == "succeeded"
        await expect(page.locator(BTC_PRICE)).to_have_text("$64,500.50")
        await offline.context.close()


async def test_a_stream_source_ticks_in_one_observation_at_a_time(
    browser: Browser, service: Service, artifacts: Path
) -> None:
    """A source whose run is its stream gets a ticker per pair; each published observation
    moves its price, time, tick count and sparkline, without a reload. A batch source gets none."""
    assert (await service.ingest()).status == "succeeded"  # coingecko: BTC and its asset
    assert service.app is not None
    run_id = await seed_run(
        service.app.state.engine,
        source="binance",
        status="running",
        started_at=datetime.now(UTC),
        trigger=STREAM_TRIGGER,
    )
    offline = await open_dashboard(browser, service)
    page = page_of(offline)
    await expect(page.locator("#live")).to_have_text("Live")
    await expect(page.locator("#tickers-empty")).to_be_visible()
    await page.evaluate("window.loadedOnce = true")

    start = datetime.now(UTC).replace(microsecond=0)
    ticker = page.locator('#tickers li[data-source="binance"][data-symbol="BTC"]')
    await stream_ticks(service, run_id, "BTC", start, "93412.57")
    await expect(ticker).to_have_attribute("data-ticks", "1")
    await expect(ticker.locator('[data-role="price"]')).to_have_text("$93,412.57")
    await expect(page.locator("#tickers-empty")).to_be_hidden()

    await stream_ticks(service, run_id, "BTC", start + timedelta(seconds=1), "93413.10", "93414.25")
    await expect(ticker).to_have_attribute("data-ticks", "3")
    await expect(ticker.locator('[data-role="price"]')).to_have_text("$93,414.25")
    await expect(ticker.locator('[data-role="price"]')).to_have_attribute("data-price", "93414.25")
    await expect(ticker.locator("time")).to_have_attribute(
        "datetime", re.compile(rf"^{(start + timedelta(seconds=2)):%Y-%m-%dT%H:%M:%S}")
    )
    await expect(ticker).to_have_class(re.compile(r"\bup\b"))
    points = await ticker.locator(".spark polyline").get_attribute("points")
    assert points is not None
    assert len(points.split()) == 3, points
    await expect(ticker.locator(".ticks")).to_have_text("3 ticks")

    await stream_ticks(service, run_id, "BTC", start + timedelta(seconds=3), "93401.00")
    await expect(ticker).to_have_attribute("data-ticks", "4")
    await expect(ticker).to_have_class(re.compile(r"\bdown\b"))

    await expect(page.locator('#tickers li[data-source="coingecko"]')).to_have_count(0)
    assert await page.evaluate("window.loadedOnce") is True, "the page was reloaded"
    await page.screenshot(path=artifacts / "dashboard-streams.png", full_page=True)
    assert offline.blocked == []
    assert offline.failed == []
    await offline.context.close()


async def test_the_binance_stream_ticks_in_as_the_exchange_trades(
    browser: Browser, service: Service
) -> None:
    """The real stream (the worker's StreamRunner, in the service's process and broker) against
    the fake Binance: its run marks the source as a stream, and each trade, a second apart from
    the others, arrives as a tick of its own."""
    assert (await service.ingest()).status == "succeeded"
    assert service.app is not None
    offline = await open_dashboard(browser, service)
    page = page_of(offline)
    await expect(page.locator("#live")).to_have_text("Live")

    with FakeExchange({"binance": ("BTCUSDT",)}, per_pair=5, history=0) as exchange:
        exchange.rate = 10  # trades 7 s apart on the tape: one observation each
        settings = service.settings.model_copy(
            update={
                "binance_base_url": exchange.base_url("binance"),
                "binance_ws_url": exchange.ws_url("binance"),
                "binance_pairs": ["BTCUSDT"],
            }
        )
        state = service.app.state
        async with open_runtime(settings, engine=state.engine, broker=state.broker) as runtime:
            stream = asyncio.create_task(StreamRunner(runtime, "binance").run())
            try:
                ticker = page.locator('#tickers li[data-source="binance"][data-symbol="BTC"]')
                await expect(ticker).to_have_attribute("data-ticks", "5", timeout=20_000)
                last = exchange.published("binance")[-1]
                shown = await ticker.locator('[data-role="price"]').get_attribute("data-price")
                assert shown is not None
                assert Decimal(shown) == last.price  # USDT at par
                points = await ticker.locator(".spark polyline").get_attribute("points")
                assert points is not None
                assert len(points.split()) == 5
            finally:
                stream.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await stream
    assert offline.blocked == []
    await offline.context.close()
