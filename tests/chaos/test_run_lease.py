"""A run whose process was killed is closed by its lease, not left `running`: once the lease
(KASPARRO_RUN_LEASE) has expired without a heartbeat, any process that starts a run, of any
source, closes it as `abandoned` with its cause, and the next run of its source resumes from
the checkpoint the killed run committed."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.chaos.checks import csv_keys, duplicate_keys, price_count, runs, stored_keys, wait_for
from tests.chaos.figures import Figures
from tests.support.fake_upstream import FakeUpstream
from tests.workers.pipeline.test_crash import (
    checkpoint_state,
    ingest,
    wait_until,
    write_kaggle_csv,
)

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

LEASE = 2  # seconds
CSV_ROWS = 12_000
KILL_AFTER = 3_000  # prices committed before the kill


async def test_a_killed_run_is_abandoned_once_its_lease_expires_and_the_next_run_resumes(
    tmp_path: Path, database: AsyncEngine, upstream: FakeUpstream, figures: Figures
) -> None:
    csv_file = tmp_path / "coin_mixed.csv"
    write_kaggle_csv(csv_file, CSV_ROWS, seed=17)
    stream = str(csv_file.resolve())
    csv_args = ["csv", "--file", str(csv_file)]
    env = {
        "KASPARRO_RUN_LEASE": str(LEASE),
        "KASPARRO_CSV_BATCH_SIZE": "200",
        "COINPAPRIKA_BASE_URL": upstream.coinpaprika_url,
    }
    async with ingest(csv_args, tmp_path, **env) as runner:
        process = await runner.spawn(database)
        await wait_until(database, 0, process, KILL_AFTER)
        process.kill()
        assert await process.wait() < 0, "the run ended before it was killed"
        figures.add("kills")
        (killed,) = await runs(database)
        assert killed.status == "running"
        at_kill = (await checkpoint_state(database, "csv:kaggle"))[stream]
        stored_at_kill = await price_count(database)
        assert stored_at_kill == at_kill["line"] - 1

        # Another source's runs, until one of them finds the lease expired.
        runner.args = ["coinpaprika"]

        async def closed_by_lease() -> bool:
            assert await runner.run(database) == 0, runner.output()
            (run,) = await runs(database, source="csv")
            return bool(run.status != "running")

        await wait_for(closed_by_lease, timeout=LEASE * 10, what="the lease to close the run")
        (abandoned,) = await runs(database, source="csv")
        assert abandoned.status == "abandoned", (abandoned.status, abandoned.error)
        assert abandoned.error, "an abandoned run says why"
        assert abandoned.finished_at is not None

        runner.args = csv_args
        assert await runner.run(database) == 0, runner.output()

    resumed = (await runs(database, source="csv"))[-1]
    assert resumed.status == "succeeded"
    assert resumed.checkpoint_before == {f"csv:kaggle {stream}": at_kill}
    assert resumed.fetched == CSV_ROWS - stored_at_kill  # resumed, not started over
    expected = csv_keys(csv_file, symbol="Symbol", at="Date", layout="%Y-%m-%d %H:%M:%S")
    stored = await stored_keys(database, "csv:kaggle")
    figures.add("rows_checked", len(stored))
    figures.add("duplicates", await duplicate_keys(database))
    figures.add("lost", len(expected - stored))
    assert stored == expected
    assert await price_count(database, source="csv:kaggle") == CSV_ROWS
    assert await duplicate_keys(database) == 0
