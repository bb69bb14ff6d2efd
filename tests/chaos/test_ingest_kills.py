"""`kasparro ingest` killed with SIGKILL again and again, a CSV backfill and a CoinGecko run,
on a private PostgreSQL: after every kill the committed checkpoint covers exactly the committed
prices, and once a last run completes every input row is stored exactly once.

The runs are forked by tests/support/ingest_child.py (the command line already imported), so a
kill and a resume cost a fork. Kill instants are seeded: most come once a random number of
prices is committed, plus a few milliseconds (so some land mid-transaction); every fourth comes
at a random instant after the fork, start-up included.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from signal import SIGKILL
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from server.tables import prices
from tests.chaos.checks import (
    csv_keys,
    duplicate_keys,
    newest_run_id,
    price_count,
    runs,
    scalar,
    stored_keys,
)
from tests.chaos.figures import Figures
from tests.support import upstream_data
from tests.support.fake_upstream import FakeUpstream
from tests.workers.pipeline.test_crash import (
    Ingest,
    checkpoint_state,
    ingest,
    raw_item_count,
    totals,
    wait_until,
    write_kaggle_csv,
)

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(240)]

SEED = 1414
CSV_ROWS = 20_000
CSV_BATCH = 500
CSV_KILLS = 14
API_COINS = 850  # three full pages of 250 and a short fourth
PER_PAGE = 250
API_KILLS = 8
ANYWHERE_EVERY = 4  # every fourth kill at a random instant after the fork
ANYWHERE_SECONDS = 0.6


async def kill_repeatedly(
    runner: Ingest,
    engine: AsyncEngine,
    *,
    kills: int,
    below: int,
    rng: random.Random,
    check: Callable[[AsyncEngine], Awaitable[None]],
) -> list[int]:
    """SIGKILL `kills` runs that are still going, checking `check` after each; returns the ids
    of the runs left `running` by a killed process."""
    anywhere = [k % ANYWHERE_EVERY == ANYWHERE_EVERY - 1 for k in range(kills)]
    places = iter(sorted(rng.uniform(0, below) for _ in range(anywhere.count(False))))
    landed = started = 0
    killed_runs: list[int] = []
    while landed < kills:
        started += 1
        assert started <= kills * 3, f"only {landed} of {started} kills landed mid-run"
        last_id = await newest_run_id(engine)
        process = await runner.spawn(engine)
        if anywhere[landed]:
            await asyncio.sleep(rng.uniform(0, ANYWHERE_SECONDS))
        else:
            await wait_until(engine, last_id, process, int(next(places, below)))
            await asyncio.sleep(rng.uniform(0, 0.02))
        if process.returncode is None:
            process.kill()
            landed += 1
        await process.wait()
        opened = [run for run in await runs(engine) if run.id > last_id]
        if process.returncode == -SIGKILL and opened and opened[-1].status == "running":
            killed_runs.append(opened[-1].id)
        await check(engine)
    return killed_runs


def assert_killed_runs_closed(all_runs: list[Any], killed: list[int], *, minimum: int) -> None:
    """Each run a kill left `running` was closed as abandoned, none is left running, and the
    last run succeeded."""
    assert len(killed) >= minimum, f"only {len(killed)} kills left a run open"
    closed = {run.id: run for run in all_runs}
    for run_id in killed:
        assert closed[run_id].status == "abandoned", (run_id, closed[run_id].error)
        assert closed[run_id].error, "an abandoned run says why"
    assert not [run.id for run in all_runs if run.status == "running"], "a run left running"
    assert all_runs[-1].status == "succeeded"


async def test_a_csv_backfill_killed_again_and_again_stores_every_row_once(
    tmp_path: Path, database: AsyncEngine, figures: Figures
) -> None:
    csv_file = tmp_path / "coin_mixed.csv"
    write_kaggle_csv(csv_file, CSV_ROWS, SEED)
    stream = str(csv_file.resolve())

    async def checkpoint_covers_the_stored_rows(engine: AsyncEngine) -> None:
        state = (await checkpoint_state(engine, "csv:kaggle")).get(stream)
        covered = 0 if state is None else state["line"] - 1  # line 1 is the header
        assert await price_count(engine) == covered, "checkpoint and committed prices disagree"
        counts = await totals(engine)
        assert counts["inserted"] == counts["fetched"] == covered

    args = ["csv", "--file", str(csv_file)]
    async with ingest(args, tmp_path, KASPARRO_CSV_BATCH_SIZE=str(CSV_BATCH)) as runner:
        killed = await kill_repeatedly(
            runner,
            database,
            kills=CSV_KILLS,
            below=CSV_ROWS * 8 // 10,
            rng=random.Random(SEED),
            check=checkpoint_covers_the_stored_rows,
        )
        figures.add("kills", CSV_KILLS)
        assert await runner.run(database) == 0, runner.output()

    expected = csv_keys(csv_file, symbol="Symbol", at="Date", layout="%Y-%m-%d %H:%M:%S")
    stored = await stored_keys(database, "csv:kaggle")
    figures.add("rows_checked", await price_count(database))
    figures.add("duplicates", await duplicate_keys(database))
    figures.add("lost", len(expected - stored))
    assert len(expected) == CSV_ROWS
    assert stored == expected
    assert await price_count(database) == CSV_ROWS
    assert await duplicate_keys(database) == 0
    assert await raw_item_count(database) == CSV_ROWS  # every row kept raw exactly once
    await checkpoint_covers_the_stored_rows(database)
    state = (await checkpoint_state(database, "csv:kaggle"))[stream]
    assert (state["line"], state["offset"]) == (CSV_ROWS + 1, csv_file.stat().st_size)
    assert_killed_runs_closed(await runs(database), killed, minimum=CSV_KILLS // 2)


async def test_a_coingecko_run_killed_again_and_again_stores_every_coin_once(
    tmp_path: Path, database: AsyncEngine, upstream: FakeUpstream, figures: Figures
) -> None:
    upstream.coins = upstream_data.market_coins(API_COINS)
    pages = -(-API_COINS // PER_PAGE)

    async def checkpoint_covers_the_stored_pages(engine: AsyncEngine) -> None:
        state = (await checkpoint_state(engine, "coingecko")).get("")
        stored = await price_count(engine)
        if state is None:
            assert stored == 0
        elif not state["complete"] and stored < API_COINS:
            assert stored == state["page"] * PER_PAGE, "checkpoint and committed prices disagree"
        else:  # a completed cycle stored every coin; later cycles find them stored
            assert stored == API_COINS
        counts = await totals(engine)
        assert counts["inserted"] == stored
        assert counts["fetched"] == counts["inserted"] + counts["skipped"]

    env = {
        "COINGECKO_BASE_URL": upstream.coingecko_url,
        "KASPARRO_COINGECKO_CALLS_PER_MINUTE": "60000",
        "KASPARRO_COINGECKO_MAX_PAGES": "10",
        "KASPARRO_HTTP_BACKOFF": "0.01",
    }
    async with ingest(["coingecko"], tmp_path, **env) as runner:
        killed = await kill_repeatedly(
            runner,
            database,
            kills=API_KILLS,
            below=(pages - 1) * PER_PAGE,
            rng=random.Random(SEED + 1),
            check=checkpoint_covers_the_stored_pages,
        )
        figures.add("kills", API_KILLS)
        assert await runner.run(database) == 0, runner.output()

    stored = await price_count(database, source="coingecko")
    assets_priced = await scalar(database, select(func.count(func.distinct(prices.c.asset_id))))
    figures.add("rows_checked", stored)
    figures.add("duplicates", await duplicate_keys(database))
    figures.add("lost", API_COINS - assets_priced)
    assert stored == assets_priced == API_COINS
    assert await duplicate_keys(database) == 0
    assert await raw_item_count(database) == (await totals(database))["fetched"]
    state = (await checkpoint_state(database, "coingecko"))[""]
    assert (state["page"], state["complete"]) == (pages, True)
    assert_killed_runs_closed(await runs(database), killed, minimum=API_KILLS // 2)
