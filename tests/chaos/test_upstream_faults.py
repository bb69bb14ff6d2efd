"""`kasparro ingest coingecko` against an upstream that misbehaves on every page: throttling
with Retry-After, 5xx, answers slower than the timeout, then a page that is not JSON. Transient
faults are retried and cost nothing; a fault that persists fails the run with its cause, keeps
every page committed before it, and the next run resumes where it stopped."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.chaos.checks import duplicate_keys, price_count, runs
from tests.chaos.figures import Figures
from tests.support import upstream_data
from tests.support.fake_upstream import FakeUpstream, Fault, Route
from tests.workers.pipeline.test_crash import checkpoint_state, ingest, raw_item_count, totals

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

COINS = 850  # three full pages of 250 and a short fourth
PER_PAGE = 250


async def test_upstream_faults_are_retried_or_fail_the_run_and_lose_nothing(
    tmp_path: Path, database: AsyncEngine, upstream: FakeUpstream, figures: Figures
) -> None:
    upstream.coins = upstream_data.market_coins(COINS)
    env = {
        "COINGECKO_BASE_URL": upstream.coingecko_url,
        "KASPARRO_COINGECKO_CALLS_PER_MINUTE": "60000",
        "KASPARRO_COINGECKO_MAX_PAGES": "10",
        "KASPARRO_HTTP_BACKOFF": "0.01",
        "KASPARRO_HTTP_TIMEOUT": "0.5",
    }
    transient = {
        "1": [Fault.throttle(0), Fault.server_error(503)],
        "2": [Fault.slow(2), Fault.server_error(502)],
        "4": [Fault.throttle(0), Fault.slow(2)],
    }
    for page, faults in transient.items():
        upstream.inject(Route.MARKETS, *faults, when={"page": page})
    upstream.inject(Route.MARKETS, Fault.malformed(), when={"page": "3"})
    figures.add("upstream_faults", sum(map(len, transient.values())) + 1)

    async with ingest(["coingecko"], tmp_path, **env) as runner:
        assert await runner.run(database) == 1, runner.output()  # failed
        (failed,) = await runs(database)
        assert failed.status == "failed"
        assert "upstream" in (failed.error or ""), failed.error
        # The two pages before the broken one are stored, and their checkpoint with them.
        assert await price_count(database) == 2 * PER_PAGE
        state = (await checkpoint_state(database, "coingecko"))[""]
        assert (state["page"], state["complete"]) == (2, False)

        assert await runner.run(database) == 0, runner.output()

    assert upstream.pending_faults(Route.MARKETS) == 0
    assert upstream.pages_requested().count(1) == 3  # two faults retried, then the page
    resumed = (await runs(database))[-1]
    assert resumed.status == "succeeded"
    assert resumed.fetched == COINS - 2 * PER_PAGE  # from page 3 on, not from the start
    stored = await price_count(database)
    figures.add("rows_checked", stored)
    figures.add("duplicates", await duplicate_keys(database))
    figures.add("lost", COINS - stored)
    assert stored == COINS
    assert await duplicate_keys(database) == 0
    assert await raw_item_count(database) == (await totals(database))["fetched"]
