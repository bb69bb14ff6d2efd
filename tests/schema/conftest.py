"""The real app over HTTP on a migrated database (SQLite and PostgreSQL in turn)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette

from server.settings import Settings
from tests.support.asgi import running_app


def app_settings(engine: AsyncEngine, **env: Any) -> Settings:
    """The app on `engine`. These tests write rows behind the app's back and count the
    statements a request costs: the live hub's look for other processes' commits (twice a
    second in the embedded default) is put off unless a test asks for it."""
    url = engine.url.render_as_string(hide_password=False)
    env.setdefault("KASPARRO_LIVE_POLL_INTERVAL", 3600)
    return Settings.load(_env_file=None, DATABASE_URL=url, **env)


@pytest.fixture
async def app(engine: AsyncEngine) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    async with running_app(app_settings(engine)) as running:
        yield running


@pytest.fixture
def client(app: tuple[Starlette, httpx.AsyncClient]) -> httpx.AsyncClient:
    return app[1]
