"""The live stack: a migrated PostgreSQL database, a private Redis (which a test may restart),
a CSV price feed, and the Node client's packages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from server.settings import Settings
from tests.support.database import migrated_engine
from tests.support.node_client import install_node_packages, node_tools
from tests.support.price_feed import CsvFeed
from tests.support.redis_server import RedisServer, private_redis_server


@dataclass(frozen=True)
class Stack:
    settings: Settings
    engine: AsyncEngine
    redis: RedisServer
    feed: CsvFeed

    @property
    def env(self) -> dict[str, str]:
        """The variables that point a `kasparro` process at this stack."""
        assert self.settings.redis_url is not None
        return {
            "DATABASE_URL": self.settings.database_url,
            "REDIS_URL": self.settings.redis_url,
            "KASPARRO_SOURCES": "csv",
            "KASPARRO_CSV_PATHS": str(self.feed.path),
        }


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    async with private_redis_server() as server:
        yield server


@pytest.fixture
async def stack(pg_url: str, redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[Stack]:
    """A migrated database of its own, a Redis of its own, and an empty CSV feed."""
    feed = CsvFeed(tmp_path / "prices.csv")
    settings = Settings.load(
        _env_file=None,
        DATABASE_URL=pg_url,
        REDIS_URL=redis_server.url,
        KASPARRO_SOURCES="csv",
        KASPARRO_CSV_PATHS=str(feed.path),
        KASPARRO_LOG_LEVEL="warning",
    )
    async with migrated_engine(settings) as engine:
        yield Stack(settings, engine, redis_server, feed)


@pytest.fixture(scope="session")
def node() -> str:
    """The node binary, with tests/live/node's packages installed (npm ci when missing)."""
    node, npm = node_tools()
    install_node_packages(npm)
    return node
