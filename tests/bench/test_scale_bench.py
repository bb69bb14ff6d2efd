"""bench.scale's pure parts: the data set it generates (deterministic, the same values at every
size, per minute, time-major), the rows it COPYs in ingestion's shape, and how it reports."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bench import scale
from bench.scale import (
    Disk,
    Figures,
    Ingested,
    Plan,
    QueryResult,
    Retained,
    minute_interval,
    parse_bound,
    retention_hours,
    strip_identity,
    summary_table,
    write_figures,
)
from bench.scale_data import (
    BATCH,
    END,
    Coin,
    Size,
    Walk,
    appended,
    bulk_batches,
    compact,
    dataset,
    kaggle_lines,
    observations,
    parse_size,
)
from workers.pipeline.serialize import canonical_json


def test_a_size_spreads_its_rows_over_its_assets() -> None:
    size = parse_size("2000000:3")
    assert size == Size(2_000_000, 3)
    assert [size.rows_of(coin) for coin in size.coins] == [666_667, 666_667, 666_666]
    assert parse_size("20m:20") == Size(20_000_000, 20)
    assert parse_size("20_000:3").rows_of(Coin(0)) == 6_667


@pytest.mark.parametrize("text", ["2000000", "2000000:2", "abc:3", "5:20", "9000000000:3"])
def test_a_size_it_cannot_make_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


def test_sizes_are_labelled_compactly() -> None:
    assert [compact(n) for n in (2_000_000, 20_000_000, 20_000, 2_500_000, 999)] == [
        "2m",
        "20m",
        "20k",
        "2_5m",
        "999",
    ]


def test_a_walk_is_the_same_for_a_seed_and_differs_between_seeds_and_coins() -> None:
    def first(seed: int, coin: int) -> list[tuple[float, ...]]:
        walk = Walk(seed, Coin(coin))
        return [walk.next() for _ in range(50)]

    assert first(1, 0) == first(1, 0)
    assert first(1, 0) != first(2, 0)
    assert first(1, 0) != first(1, 1)


def test_skipping_ahead_lands_where_stepping_does() -> None:
    stepped, skipped = Walk(7, Coin(2)), Walk(7, Coin(2))
    for _ in range(Walk.SEGMENT + 10):
        stepped.next()
    skipped.skip_to(Walk.SEGMENT + 10)
    assert skipped.price == stepped.price
    assert [skipped.next() for _ in range(5)] == [stepped.next() for _ in range(5)]
    with pytest.raises(ValueError, match="past"):
        skipped.skip_to(10)


def test_a_far_minute_is_the_same_however_it_is_reached() -> None:
    far = 1_000_000
    direct, walked = Walk(7, Coin(0)), Walk(7, Coin(0))
    direct.skip_to(far)
    walked.skip_to(far - 3 * Walk.SEGMENT - 1)
    for _ in range(3 * Walk.SEGMENT + 1):
        walked.next()
    assert direct.next() == walked.next()


def test_each_minute_opens_at_the_last_close_across_segments() -> None:
    walk = Walk(3, Coin(0))
    walk.skip_to(Walk.SEGMENT - 50)
    previous = walk.price
    for _ in range(2 * Walk.SEGMENT):
        open_, high, low, close, volume = walk.next()
        assert open_ == previous
        assert low <= min(open_, close) <= max(open_, close) <= high
        assert abs(math.log(close / open_)) < 0.01  # a minute's move: no jump at a boundary
        assert volume > 0
        previous = close


def test_the_data_set_is_time_major_per_minute_and_ends_at_end() -> None:
    size = Size(25, 3)  # 9, 8, 8 rows
    rows = list(dataset(size, seed=5))
    assert len(rows) == 25
    assert [(row.index, row.coin.index) for row in rows] == sorted(
        (row.index, row.coin.index) for row in rows
    )
    counts = {coin: sum(1 for row in rows if row.coin == coin) for coin in size.coins}
    assert counts == {Coin(0): 9, Coin(1): 8, Coin(2): 8}
    last = rows[-1]
    assert (last.coin, last.cells[2]) == (Coin(2), END.strftime("%Y-%m-%d %H:%M:%S"))
    times = sorted({datetime.fromisoformat(row.cells[2]) for row in rows})
    assert all(b - a == timedelta(minutes=1) for a, b in itertools.pairwise(times))
    name, symbol = rows[0].cells[:2]
    assert (name, symbol) == ("Kasparro Coin 000", "K000")


def test_a_smaller_size_holds_the_last_rows_of_the_larger_ones_series() -> None:
    small = [row for row in dataset(Size(30, 3), seed=9) if row.coin == Coin(1)]
    large = [row for row in dataset(Size(200, 20), seed=9) if row.coin == Coin(1)]
    assert len(small) == 10
    assert small == large[-10:]


def test_appended_rows_continue_the_common_series_after_end() -> None:
    base = {row.coin: row for row in dataset(Size(30, 3), seed=4)}  # each coin's last row
    first_round = list(appended(seed=4, rows=10, number=0))
    second_round = list(appended(seed=4, rows=10, number=1))
    assert len(first_round) == len(second_round) == 10
    assert {row.coin.index for row in first_round} == {0, 1, 2}
    for row in first_round[:3]:
        assert datetime.fromisoformat(row.cells[2]).replace(tzinfo=UTC) == END + timedelta(
            minutes=1
        )
        assert row.cells[5] == base[row.coin].cells[6]  # open = the last close before it
    # The second round starts where the first one's minutes end (4 minutes of 3 coins).
    assert second_round[0].index == first_round[0].index + 4
    assert list(appended(seed=4, rows=10, number=1)) == second_round


def test_kaggle_lines_number_the_rows_under_the_header() -> None:
    rows = list(observations(1, [Coin(0), Coin(1)], {Coin(0): 0, Coin(1): 1}, 0, 3))
    lines = list(kaggle_lines(rows))
    assert lines[0] == ["SNo", "Name", "Symbol", "Date", "High", "Low", "Open", "Close", "Volume",
                        "Marketcap"]  # fmt: skip
    assert [line[0] for line in lines[1:]] == ["1", "2", "3", "4", "5"]
    assert [line[2] for line in lines[1:]] == ["K000", "K000", "K001", "K000", "K001"]


def test_bulk_rows_are_what_ingestion_stores_for_each_batch() -> None:
    coins = [Coin(0), Coin(1)]
    rows = list(observations(2, coins, dict.fromkeys(coins, 0), 0, (BATCH + 2) // 2))
    batches = list(bulk_batches(iter(rows), file="data/x.csv", run_id=4, first_raw_id=10))
    assert [len(prices) for _, prices in batches] == [BATCH, 2]
    raw, prices = batches[0]
    raw_id, run_id, source, origin, content_hash, payload, fetched_at = raw
    assert (raw_id, run_id, source) == (10, 4, "csv:kaggle")
    assert origin == f"data/x.csv:2 .. data/x.csv:{BATCH + 1}"
    items = json.loads(payload)["items"]
    header = next(kaggle_lines([]))
    assert items[0] == dict(zip(header, ["1", *rows[0].cells], strict=True))
    # The hash is of the items' canonical JSON, as the pipeline's serializer makes it.
    assert content_hash == hashlib.sha256(canonical_json(items).encode()).hexdigest()
    newest = datetime.fromisoformat(rows[BATCH - 1].cells[2]).replace(tzinfo=UTC)
    assert fetched_at == newest + timedelta(seconds=1)
    first = prices[0]
    assert first[:9] == [1, "csv:kaggle", f"{rows[0].cells[2]}+00", rows[0].cells[6],
                         rows[0].cells[8], rows[0].cells[7], rows[0].cells[5], rows[0].cells[3],
                         rows[0].cells[4]]  # fmt: skip
    assert json.loads(first[9]) == {"SNo": "1"}
    assert first[10:13] == [4, 10, "data/x.csv:2"]
    assert batches[1][0][0] == 11
    assert batches[1][1][-1][12] == f"data/x.csv:{BATCH + 3}"


def test_the_minute_interval_is_the_finest_the_schema_has() -> None:
    assert minute_interval("enum CandleInterval {\n  MINUTE\n  HOUR\n  DAY\n}") == "MINUTE"
    assert minute_interval("enum CandleInterval {\n  FIVE_MINUTES\n  HOUR\n}") == "FIVE_MINUTES"
    with pytest.raises(SystemExit):
        minute_interval("enum CandleInterval {\n  HOUR\n}")


def test_responses_are_compared_without_ids_and_cursors() -> None:
    a = {"prices": {"edges": [{"cursor": "x", "node": {"id": "1", "priceUsd": "2"}}],
                    "pageInfo": {"endCursor": "x", "hasNextPage": True}}}  # fmt: skip
    b = {"prices": {"edges": [{"cursor": "y", "node": {"id": "9", "priceUsd": "2"}}],
                    "pageInfo": {"endCursor": "y", "hasNextPage": True}}}  # fmt: skip
    assert strip_identity(a) == strip_identity(b)
    b["prices"]["edges"][0]["node"]["priceUsd"] = "3"  # type: ignore[index]
    assert strip_identity(a) != strip_identity(b)


def test_retention_keeps_just_short_of_the_oldest_partitions_end() -> None:
    upper = datetime(2024, 8, 1, tzinfo=UTC)
    now = datetime(2026, 12, 7, 4, 30, tzinfo=UTC)
    hours = retention_hours(upper, now)
    cutoff = now - timedelta(hours=hours)
    assert upper <= cutoff < upper + timedelta(hours=1)


def test_partition_bounds_are_read_as_utc_times() -> None:
    assert parse_bound("2024-07-01 00:00:00+00") == datetime(2024, 7, 1, tzinfo=UTC)


def figures() -> Figures:
    def query(label: str, number: int, rate: float) -> QueryResult:
        cpu = 1.0 if label == "2m" else 1.25  # ms per request; PostgreSQL's 0.5 at both
        return QueryResult(number, "page1", label, int(rate * 10), 10.0, 5.0, 9.0, 0, cpu, 0.5)

    return Figures(
        loads=[],
        ingested=[Ingested(1, "2m", 1000, 2.0, 0.1), Ingested(1, "20m", 1000, 2.0, 0.125)],
        queries=[
            query("2m", 1, 1000.0),
            query("20m", 1, 900.0),
            query("2m", 2, 1000.0),
            query("20m", 2, 800.0),
        ],
        retained=[
            Retained(
                "20m",
                partition="prices_p2024_07",
                rows=5,
                cli_s=2.5,
                startup_s=2.0,
                sql_partition="prices_p2024_08",
                sql_rows=6,
                sql_s=0.0421,
            )
        ],
        disks=[
            Disk("2m", 2_000_000, {"prices": 2 * 2**30, "raw_records": 2**30, "roll-ups": 0}),
            Disk(
                "20m",
                20_000_000,
                {"prices": 20 * 2**30, "raw_records": 10 * 2**30, "roll-ups": 2**20},
            ),
        ],
        plan=Plan(["K000"], END, "MINUTE", 30_000, END),
    )


def test_the_summary_gives_each_point_its_figures_ratio_and_target() -> None:
    lines = summary_table(figures(), ["2m", "20m"])
    assert lines[0] == "| | 2m | 20m | 20m ÷ 2m | target |"
    ingestion = next(line for line in lines if line.startswith("| ingestion"))
    assert "| 10,000 | 8,000 | 0.80 | ≥ 0.90 |" in ingestion
    page = next(line for line in lines if line.startswith("| prices page 1"))
    # Rounds 1 and 2 slow down 1.11x and 1.25x: the worst one is reported; CPU 1.75 / 1.5 ms.
    assert "| 1,000 | 850 | 1.25x; CPU 1.17x | ≤ 1.20x |" in page
    drop = next(line for line in lines if "DETACH + DROP" in line)
    assert "0.04 s (6 prices)" in drop
    disk = next(line for line in lines if "raw_records" in line)
    assert "| 512.0 MB | 512.0 MB |" in disk


def test_figures_replace_the_section_between_its_markers(tmp_path: Path) -> None:
    import argparse

    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Figures\n\n## Other\n\ntext\n")
    args = argparse.Namespace(argv=["--reuse-db"], elapsed=120.0)
    write_figures(args, ["| a |"], path)
    first = path.read_text()
    assert first.startswith("# Figures\n\n## Other\n\ntext\n\n## Scale:")
    assert "`.venv/bin/python -m bench.scale --reuse-db` (2 minutes)" in first
    assert "| a |" in first
    write_figures(args, ["| b |"], path)
    second = path.read_text()
    assert "| b |" in second
    assert "| a |" not in second
    assert second.count("## Scale:") == 1
    assert second.count(scale.BEGIN) == 1


@pytest.mark.parametrize("name", ["postgres", "kasparro_template_1", "kasparro", "test"])
def test_it_never_creates_or_drops_a_database_not_its_own(name: str) -> None:
    with pytest.raises(SystemExit, match="refusing"):
        scale.guard(name)
