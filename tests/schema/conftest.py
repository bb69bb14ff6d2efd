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
    url = engine.url.render_as_string(hide_password=False)
    return Settings.load(_env_file=None, DATABASE_URL=url, **env)


@pytest.fixture
async def app(engine: AsyncEngine) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    async with running_app(app_settings(engine)) as running:
        yield running


@pytest.fixture
def client(app: tuple[Starlette, httpx.AsyncClient]) -> httpx.AsyncClient:
    return app[1]
