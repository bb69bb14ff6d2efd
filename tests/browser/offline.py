"""Browser contexts that reach nothing but the service under test."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from playwright.async_api import Browser, BrowserContext, Route, ViewportSize

from tests.browser.service import Service

DESKTOP = ViewportSize(width=1280, height=900)
PHONE = ViewportSize(width=390, height=844)


@dataclass
class Offline:
    """A browser context whose network is the service alone: every other request is aborted
    and recorded, and so is every failed or 4xx/5xx response from the service."""

    context: BrowserContext
    allowed: str
    blocked: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    async def route(self, route: Route) -> None:
        if urlsplit(route.request.url).netloc == self.allowed:
            await route.continue_()
        else:
            self.blocked.append(route.request.url)
            await route.abort("internetdisconnected")


async def offline_context(
    browser: Browser, service: Service, viewport: ViewportSize = DESKTOP
) -> Offline:
    """A new context (fresh storage) that can reach nothing but `service`."""
    context = await browser.new_context(
        viewport=viewport,
        locale="en-US",
        timezone_id="UTC",
        color_scheme="light",
        service_workers="block",
    )
    offline = Offline(context, service.host)
    await context.route("**/*", offline.route)
    context.on(
        "requestfailed",
        lambda request: offline.failed.append(f"{request.url}: {request.failure}"),
    )
    context.on(
        "response",
        lambda response: (
            offline.failed.append(f"{response.url}: HTTP {response.status}")
            if response.status >= 400
            else None
        ),
    )
    return offline
