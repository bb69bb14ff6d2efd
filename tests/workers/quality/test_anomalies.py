"""Run-level anomalies: a run's numbers against its source's own history (median and MAD)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.fake_upstream import FakeUpstream, Fault, Route
from tests.support.upstream_data import market_coins
from tests.workers.quality.conftest import OpenRuntime, anomaly_rows
from workers.pipeline.runner import RunResult, run_source
from workers.quality.anomalies import RUN_METRICS, robust_score
from workers.runtime import Runtime

USUAL = 30


async def usual_runs(runtime: Runtime, fake: FakeUpstream, count: int) -> None:
    fake.coins = market_coins(USUAL)
    for _ in range(count):
        result = await run_source(runtime, "coingecko", trigger="test")
        assert result.counts["fetched"] == USUAL


async def small_run(runtime: Runtime, fake: FakeUpstream) -> RunResult:
    fake.coins = market_coins(USUAL // 10)
    return await run_source(runtime, "coingecko", trigger="test")


async def test_a_run_that_fetches_a_tenth_of_its_usual_rows_is_flagged(
    runtime: Runtime, engine: AsyncEngine, fake: FakeUpstream
) -> None:
    await usual_runs(runtime, fake, 5)
    assert await anomaly_rows(engine, "run_fetched") == []

    result = await small_run(runtime, fake)

    assert result.status == "succeeded"  # an anomaly is reported, not a failure
    (anomaly,) = await anomaly_rows(engine, "run_fetched")
    assert anomaly.run_id == result.run_id
    assert anomaly.source == "coingecko"
    assert anomaly.value == Decimal(3)
    assert anomaly.expected == Decimal(30)
    assert anomaly.score <= -3.5
    assert anomaly.detail["history_runs"] == 5
    assert anomaly.price_id is None


async def test_nothing_is_judged_before_the_source_has_enough_history(
    runtime: Runtime, engine: AsyncEngine, fake: FakeUpstream
) -> None:
    await usual_runs(runtime, fake, 4)

    await small_run(runtime, fake)

    assert await anomaly_rows(engine, "run_fetched") == []


async def test_the_history_needed_comes_from_the_settings(
    make_runtime: OpenRuntime, engine: AsyncEngine, fake: FakeUpstream
) -> None:
    async with make_runtime(KASPARRO_ANOMALY_MIN_HISTORY=2) as runtime:
        await usual_runs(runtime, fake, 2)
        result = await small_run(runtime, fake)

    assert [a.run_id for a in await anomaly_rows(engine, "run_fetched")] == [result.run_id]


async def test_steady_runs_are_not_flagged(
    runtime: Runtime, engine: AsyncEngine, fake: FakeUpstream
) -> None:
    await usual_runs(runtime, fake, 7)

    kinds = {a.kind for a in await anomaly_rows(engine)}
    assert not kinds & {"run_fetched", "run_inserted", "run_error_rate"}


async def test_a_run_that_fetches_nothing_is_flagged(
    runtime: Runtime, engine: AsyncEngine, fake: FakeUpstream
) -> None:
    await usual_runs(runtime, fake, 5)
    fake.coins = []  # an empty first page: the run succeeds with nothing fetched

    result = await run_source(runtime, "coingecko", trigger="test")

    assert result.status == "succeeded"
    (anomaly,) = await anomaly_rows(engine, "run_fetched")
    assert anomaly.value == Decimal(0)


async def test_a_failed_run_is_neither_judged_nor_history(
    runtime: Runtime, engine: AsyncEngine, fake: FakeUpstream
) -> None:
    await usual_runs(runtime, fake, 5)
    fake.inject(Route.MARKETS, *[Fault.server_error(503)] * 3)

    failed = await run_source(runtime, "coingecko", trigger="test")
    result = await small_run(runtime, fake)

    assert failed.status == "failed"
    (anomaly,) = await anomaly_rows(engine, "run_fetched")
    assert anomaly.run_id == result.run_id
    assert anomaly.detail["history_runs"] == 5


@pytest.mark.parametrize(
    ("value", "history", "flagged"),
    [
        (3, [30, 30, 30, 30, 30], True),  # a steady history: the floor keeps the scale sane
        (29, [30, 30, 30, 30, 30], False),
        (100, [90, 110, 95, 105, 100, 98], False),
        (300, [90, 110, 95, 105, 100, 98], True),
        (1000, [30, 31, 29, 1000, 30], True),  # one outlier in the history does not hide it
    ],
)
def test_the_robust_score_uses_median_and_mad(
    value: float, history: list[float], flagged: bool
) -> None:
    _, score = robust_score(value, history, RUN_METRICS["fetched"])

    assert (abs(score) >= 3.5) is flagged
