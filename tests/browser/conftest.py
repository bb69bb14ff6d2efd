"""Browser tests: Playwright (the PyPI package, whose wheel carries its driver) driving the
system's Chromium (Debian's `chromium`, installed by .ci/run); no browser is ever downloaded.

Without Chromium the tests skip with the reason, except under CI (CI=true), where they fail.
Screenshots go to KASPARRO_TEST_ARTIFACTS (default: tests/artifacts/, ignored by git).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Playwright, async_playwright

from tests.browser.service import Service, running_service, service_settings
from tests.support.ci import unavailable
from tests.support.fake_upstream import FakeUpstream

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_NAMES = ("chromium", "chromium-browser")
# No sandbox: CI runs as root. The rest keeps Chromium from calling home by itself.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--no-first-run",
    "--no-default-browser-check",
]


def chromium_executable() -> str | None:
    configured = os.environ.get("KASPARRO_TEST_CHROMIUM")
    if configured:
        return configured
    return next(filter(None, (shutil.which(name) for name in CHROMIUM_NAMES)), None)


@pytest.fixture(scope="session")
def chromium() -> str:
    path = chromium_executable()
    if path is None:
        unavailable("Chromium is not installed: `apt-get install chromium` (Debian's package)")
    if not os.access(path, os.X_OK):
        unavailable(f"KASPARRO_TEST_CHROMIUM={path!r} is not an executable file")
    return path


@pytest.fixture(scope="session")
def artifacts() -> Path:
    folder = Path(os.environ.get("KASPARRO_TEST_ARTIFACTS") or ROOT / "tests" / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
async def playwright() -> AsyncIterator[Playwright]:
    async with async_playwright() as driver:
        yield driver


@pytest.fixture
async def browser(playwright: Playwright, chromium: str) -> AsyncIterator[Browser]:
    browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
    try:
        yield browser
    finally:
        await browser.close()


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream.shared()


@pytest.fixture
async def service(tmp_path: Path, fake: FakeUpstream) -> AsyncIterator[Service]:
    async with running_service(service_settings(tmp_path / "kasparro.db", fake)) as running:
        yield running
