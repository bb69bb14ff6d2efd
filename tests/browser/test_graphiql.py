"""GraphiQL at /graphql in a real browser cut off from everything but the service: it loads from
the service's own assets, a query typed into the editor runs and its result shows, and a
subscription delivers over the WebSocket."""

from __future__ import annotations

import contextlib
import copy
import re
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, ViewportSize, expect

from server.web.graphiql import INSTALL_STEP, missing_assets
from tests.browser.offline import DESKTOP, PHONE, Offline, offline_context
from tests.browser.service import Service
from tests.support.ci import unavailable
from tests.support.fake_upstream import FakeUpstream

QUERY = '{ latestPrices(symbols: ["BTC"]) { symbol source priceUsd } }'
SUBSCRIPTION = 'subscription { priceUpdates(symbols: ["BTC"]) { symbol priceUsd } }'
EDITOR = ".graphiql-query-editor .CodeMirror"
RESULT = ".graphiql-response"


@pytest.fixture(autouse=True)
def _assets_installed() -> None:
    if missing_assets():
        unavailable(f"GraphiQL's assets are not installed: run `{INSTALL_STEP}`")


async def open_graphiql(
    browser: Browser, service: Service, viewport: ViewportSize = DESKTOP
) -> Offline:
    offline = await offline_context(browser, service, viewport)
    page = await offline.context.new_page()
    await page.goto(f"{service.origin}/graphql")
    # GraphiQL rendered: its scripts and styles came from the service.
    await expect(page.locator(EDITOR)).to_be_visible()
    return offline


async def type_query(page: Page, text: str) -> None:
    """Replace the editor's text by typing `text`, as a person would."""
    await page.locator(EDITOR).click()
    await page.keyboard.press("Control+A")
    await page.keyboard.press("Delete")
    await page.keyboard.type(text, delay=5)
    await page.keyboard.press("Escape")  # closes a completion list, if one is open
    typed = await page.evaluate(
        "document.querySelector('.graphiql-query-editor .CodeMirror').CodeMirror.getValue()"
    )
    assert typed == text


async def test_a_typed_query_runs_and_its_result_shows(
    browser: Browser, service: Service, artifacts: Path
) -> None:
    assert (await service.ingest()).status == "succeeded"
    offline = await open_graphiql(browser, service)
    page = offline.context.pages[0]

    await type_query(page, QUERY)
    await page.locator(".graphiql-execute-button").click()

    result = page.locator(RESULT)
    await expect(result).to_contain_text('"priceUsd": "63000.5"')
    await expect(result).to_contain_text('"symbol": "BTC"')
    await page.screenshot(path=artifacts / "graphiql.png")
    assert offline.blocked == [], "GraphiQL asked another host"
    assert offline.failed == []
    await offline.context.close()


async def test_a_subscription_delivers_live_prices(
    browser: Browser, service: Service, fake: FakeUpstream
) -> None:
    offline = await open_graphiql(browser, service)
    page = offline.context.pages[0]
    await type_query(page, SUBSCRIPTION)
    await page.locator(".graphiql-execute-button").click()
    # Running: the button now stops the subscription.
    await expect(page.locator(".graphiql-execute-button")).to_have_attribute(
        "aria-label", re.compile("^Stop query")
    )

    # The server may still be setting the subscription up: new prices until one arrives.
    result = page.locator(RESULT)
    for minute in range(30, 45):
        price = 70000 + minute / 8
        coins = copy.deepcopy(fake.coins)
        coins[0].update(current_price=price, last_updated=f"2024-05-01T12:{minute}:00.000Z")
        fake.coins = coins
        assert (await service.ingest()).status == "succeeded"
        with contextlib.suppress(AssertionError):
            await expect(result).to_contain_text(f'"priceUsd": "{price}"', timeout=1000)
            break
    else:
        raise AssertionError("no price arrived through the subscription")
    await expect(result).to_contain_text('"symbol": "BTC"')
    assert offline.blocked == []
    await offline.context.close()


async def test_fits_a_phone_and_works_there(
    browser: Browser, service: Service, artifacts: Path
) -> None:
    await service.ingest()
    offline = await open_graphiql(browser, service, viewport=PHONE)
    page = offline.context.pages[0]

    await type_query(page, QUERY)
    await page.locator(".graphiql-execute-button").click()
    await expect(page.locator(RESULT)).to_contain_text('"priceUsd": "63000.5"')
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"]

    await page.screenshot(path=artifacts / "graphiql-phone.png")
    assert offline.blocked == []
    await offline.context.close()


async def test_says_when_the_server_is_gone_and_recovers_by_itself(
    browser: Browser, service: Service, artifacts: Path
) -> None:
    await service.ingest()
    offline = await open_graphiql(browser, service)
    page = offline.context.pages[0]

    await service.stop()
    await type_query(page, QUERY)
    await page.locator(".graphiql-execute-button").click()
    banner = page.locator("#kasparro-status")
    await expect(banner).to_contain_text("Can't reach the server")
    await page.screenshot(path=artifacts / "graphiql-server-gone.png")

    await service.start()
    await expect(banner).to_contain_text("Connected to the server again", timeout=30_000)
    await page.locator(".graphiql-execute-button").click()
    await expect(page.locator(RESULT)).to_contain_text('"priceUsd": "63000.5"')
    await expect(banner).to_be_hidden(timeout=10_000)
    assert offline.blocked == []
    await offline.context.close()
