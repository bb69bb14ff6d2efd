"""A worker runtime on a migrated database (SQLite and PostgreSQL) against the fake upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from server.settings import Settings
from tests.support.fake_upstream import FakeUpstream
from workers.runtime import Runtime, open_runtime

OpenRuntime = Callable[..., AbstractAsyncContextManager[Runtime]]


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream.shared()


def pipeline_settings(engine: AsyncEngine, fake: FakeUpstream, **env: Any) -> Settings:
    values = {
        "DATABASE_URL": engine.url.render_as_string(hide_password=False),
        "COINGECKO_BASE_URL": fake.coingecko_url,
        "COINPAPRIKA_BASE_URL": fake.coinpaprika_url,
        "KASPARRO_COINGECKO_CALLS_PER_MINUTE": 60_000,
        "KASPARRO_COINPAPRIKA_CALLS_PER_MINUTE": 60_000,
        "KASPARRO_HTTP_TIMEOUT": 2,
        "KASPARRO_HTTP_MAX_ATTEMPTS": 3,
        "KASPARRO_HTTP_BACKOFF": 0.01,
        **env,
    }
    return Settings.load(_env_file=None, **values)


@pytest.fixture
def make_runtime(engine: AsyncEngine, fake: FakeUpstream) -> OpenRuntime:
    """`async with make_runtime(**env) as runtime:` with settings overridden by env."""

    def make(**env: Any) -> AbstractAsyncContextManager[Runtime]:
        return open_runtime(pipeline_settings(engine, fake, **env), engine=engine)

    return make


@pytest.fixture
async def runtime(make_runtime: OpenRuntime) -> AsyncIterator[Runtime]:
    async with make_runtime() as runtime:
        yield runtime
