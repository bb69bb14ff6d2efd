"""GraphiQL and the dashboard work under their Content-Security-Policy: in a real browser,
nothing the pages do (rendering, the explorer and docs panes, a query, a subscription, the live
prices) is refused by the policy, and the policy is in force (an inline script is refused)."""

from __future__ import annotations

from playwright.async_api import Browser, Page, expect

from server.web.graphiql import missing_assets
from tests.browser.offline import Offline, offline_context
from tests.browser.service import Service
from tests.browser.test_graphiql import EDITOR, QUERY, RESULT, SUBSCRIPTION, type_query
from tests.support.ci import unavailable

# Records every CSP violation the page reports, in the page itself.
RECORD_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__violations.push(`${event.violatedDirective} ${event.blockedURI}`);
});
"""


async def _open(browser: Browser, service: Service, path: str) -> tuple[Offline, Page]:
    offline = await offline_context(browser, service)
    await offline.context.add_init_script(RECORD_VIOLATIONS)
    page = await offline.context.new_page()
    response = await page.goto(f"{service.origin}{path}")
    assert response is not None
    policy = response.headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in policy
    assert "'unsafe-inline'" not in policy
    assert response.headers.get("x-frame-options") == "DENY"
    return offline, page


async def _violations(page: Page) -> list[str]:
    found: list[str] = await page.evaluate("window.__violations")
    return found


async def _policy_is_in_force(page: Page) -> None:
    """An inline script the page adds is refused: the check above can see a violation."""
    await page.evaluate(
        "() => { const s = document.createElement('script'); s.textContent = "
        "'window.__ran = true'; document.body.append(s); }"
    )
    await page.wait_for_function("window.__violations.length > 0")
    assert await page.evaluate("window.__ran === undefined")


async def test_graphiql_runs_under_its_policy(browser: Browser, service: Service) -> None:
    if missing_assets():
        unavailable("GraphiQL's assets are not installed")
    assert (await service.ingest()).status == "succeeded"
    offline, page = await _open(browser, service, "/graphql")
    await expect(page.locator(EDITOR)).to_be_visible()

    await type_query(page, QUERY)
    await page.locator(".graphiql-execute-button").click()
    await expect(page.locator(RESULT)).to_contain_text('"symbol": "BTC"')
    for pane in ("Show Documentation Explorer", "Show GraphiQL Explorer"):
        button = page.get_by_role("button", name=pane)
        if await button.count():
            await button.first.click()
    await page.get_by_role("button", name="Show History").first.click()
    await type_query(page, SUBSCRIPTION)
    await page.locator(".graphiql-execute-button").click()
    await page.locator(".graphiql-execute-button").click()  # and stop it

    assert await _violations(page) == []
    await _policy_is_in_force(page)
    assert offline.blocked == []
    await offline.context.close()


async def test_the_dashboard_runs_under_its_policy(browser: Browser, service: Service) -> None:
    assert (await service.ingest()).status == "succeeded"
    offline, page = await _open(browser, service, "/dashboard")
    await expect(page.locator("#live")).to_have_text("Live")
    await expect(page.locator('#charts figure[data-symbol="BTC"] svg .candle')).to_have_count(1)

    assert await _violations(page) == []
    await _policy_is_in_force(page)
    assert offline.blocked == []
    await offline.context.close()
