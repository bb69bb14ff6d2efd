"""The chaos suite: faults injected into real processes on a private PostgreSQL and a private
Redis (never the shared servers), each started on a free port for one test.

Every test records its figures (tests/chaos/figures.py); with KASPARRO_CHAOS_REPORT=1 the
session rewrites the figures block of docs/reliability.md from them.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Generator, Iterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.chaos import figures as chaos_figures
from tests.support.database import migrated_engine
from tests.support.fake_upstream import FakeUpstream
from tests.support.postgres_server import PostgresServer, private_postgres_server
from tests.support.redis_server import RedisServer, private_redis_server


@pytest.fixture
async def postgres() -> AsyncIterator[PostgresServer]:
    """A private PostgreSQL cluster this test may kill clients of, stop and restart."""
    async with private_postgres_server() as server:
        yield server


@pytest.fixture
async def database(postgres: PostgresServer) -> AsyncIterator[AsyncEngine]:
    """The private cluster's database, migrated, and an engine on it for the test's checks."""
    async with migrated_engine(postgres.url) as engine:
        yield engine


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    async with private_redis_server() as server:
        yield server


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    """A fake CoinGecko and CoinPaprika of this test's own."""
    with FakeUpstream() as fake:
        yield fake


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each test's outcome for its figures (a failed set-up counts as failed)."""
    report = yield
    if report.when == "call" or report.failed:
        item.stash[_OUTCOME] = "passed" if report.passed else report.outcome
    return report


_OUTCOME = pytest.StashKey[str]()


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[chaos_figures.Figures]:
    """This test's figures, written for the report once it has ended (with its outcome)."""
    recorded = chaos_figures.Figures(test=request.node.name)
    yield recorded
    recorded.outcome = request.node.stash.get(_OUTCOME, "unknown")
    recorded.write(chaos_figures.directory(request.config))


def pytest_sessionfinish(session: pytest.Session) -> None:
    if os.environ.get(chaos_figures.REPORT_VARIABLE) == "1":
        folder = chaos_figures.directory(session.config)
        if folder.exists():
            chaos_figures.merge_into_doc(folder)
