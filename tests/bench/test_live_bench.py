"""bench.live's own parts, without a deployment: the paced exchange's tape and stream, matching
what subscribers received to the trades that were sent, counting what they lost, and the
figures it writes. Nothing here measures time."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

import bench.live
from bench.live import (
    BEGIN,
    END,
    Delivery,
    Latencies,
    Observation,
    Outcome,
    PacedExchange,
    Received,
    SendTimes,
    StreamUnavailable,
    delivery,
    latencies,
    paced_tape,
    pairs_for,
    percentile,
    report,
    write_figures,
)
from bench.live_client import Record, read_price
from tests.support.exchange_tape import TapeTrade
from workers.sources import plugin
from workers.sources.plugin import InstalledSource

T0 = datetime(2026, 12, 7, 4, 0, 0, tzinfo=UTC)


def trade(symbol: str, price: str, at: datetime, trade_id: int = 1) -> TapeTrade:
    return TapeTrade("binance", symbol, trade_id, at, Decimal(price), Decimal(1), "buy", trade_id)


def received(*rows: tuple[int, int, float, float]) -> Received:
    """(connection, price id, receipt time, priceUsd) rows."""
    result = Received()
    for connection, price_id, at, price in rows:
        result.connections.append(connection)
        result.ids.append(price_id)
        result.times.append(at)
        result.prices.append(price)
    return result


def test_the_tape_names_each_trade_by_its_pair_and_price() -> None:
    pairs = pairs_for(3)
    trades = paced_tape(pairs, 30)
    assert pairs == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    assert [t.symbol for t in trades[:4]] == ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BTCUSDT"]
    for pair in pairs:
        mine = [t for t in trades if t.symbol == pair]
        assert len({t.price for t in mine}) == len(mine) == 10
        assert all(b.price > a.price for a, b in itertools.pairwise(mine))
        assert [t.trade_id for t in mine] == list(range(mine[0].trade_id, mine[0].trade_id + 10))
    with pytest.raises(ValueError, match="--pairs"):
        pairs_for(0)


def test_a_price_is_matched_to_its_trade_or_else_to_the_last_trade_of_its_second() -> None:
    sent = SendTimes.of(
        [
            (trade("BTCUSDT", "100.01", T0 + timedelta(milliseconds=100)), 1000.1),
            (trade("BTCUSDT", "100.02", T0 + timedelta(milliseconds=900)), 1000.9),
            (trade("ETHUSDT", "50.00", T0 + timedelta(milliseconds=500)), 1000.5),
        ]
    )
    assert sent.find("BTC", 100.01, T0) == (1000.1, True)
    # 100.02 at a stablecoin rate other than 1: no trade has that price; the second's last does.
    assert sent.find("BTC", 100.04, T0 + timedelta(milliseconds=900)) == (1000.9, False)
    send, by_price = sent.find("BTC", 99.0, T0 + timedelta(seconds=5))
    assert math.isnan(send)
    assert not by_price
    assert sent.find("ETH", 50.0, T0) == (1000.5, True)


def test_latency_is_receipt_minus_send_and_leaves_out_the_warm_up_and_backfill() -> None:
    sent = SendTimes.of(
        [
            (trade("BTCUSDT", "100.01", T0), 1000.0),  # during the warm-up
            (trade("BTCUSDT", "100.02", T0 + timedelta(seconds=1)), 1001.0),
            (trade("BTCUSDT", "100.03", T0 + timedelta(seconds=2)), 1002.0),
        ]
    )
    stored = {
        1: Observation(1, "BTC", T0, Decimal("100.01")),
        2: Observation(2, "BTC", T0 + timedelta(seconds=1), Decimal("100.02")),
        3: Observation(3, "BTC", T0 + timedelta(seconds=2), Decimal("100.03")),
        4: Observation(4, "BTC", T0 - timedelta(hours=1), Decimal("90")),  # REST backfill
    }
    rows = received(
        (0, 1, 1000.05, 100.01),
        (0, 2, 1001.02, 100.02),
        (1, 2, 1001.04, 100.02),
        (0, 3, 1002.25, 100.0301),  # converted at another rate: matched by its second
        (0, 4, 1002.5, 90.0),
    )
    found = latencies(rows, stored, sent, measured_from=1000.5, published={2: 1001.01})
    assert [round(s, 3) for s in found.seconds] == [0.02, 0.04, 0.25]
    assert (found.before, found.unmatched, found.by_second) == (1, 1, 1)
    assert found.superseded == 1  # 100.0301 was received, 100.03 is stored
    # Either side of the commit's publish, for the messages whose publish was seen.
    assert [round(s, 3) for s in found.to_publish] == [0.01, 0.01]
    assert [round(s, 3) for s in found.from_publish] == [0.01, 0.03]


def test_percentiles_are_nearest_rank() -> None:
    values = [i / 100 for i in range(1, 101)]
    assert percentile(values, 0.5) == 0.5
    assert percentile(values, 0.99) == 0.99
    assert percentile(values, 1.0) == 1.0
    assert percentile([0.3], 0.99) == 0.3
    assert math.isnan(percentile([], 0.5))


def test_every_subscriber_is_checked_against_every_stored_observation() -> None:
    rows = received(
        (0, 1, 0, 0), (0, 2, 0, 0), (0, 3, 0, 0),  # complete
        (1, 1, 0, 0), (1, 3, 0, 0),  # lost 2
        (2, 1, 0, 0), (2, 2, 0, 0), (2, 2, 0, 0), (2, 3, 0, 0),  # 2 twice
        (3, 2, 0, 0), (3, 1, 0, 0), (3, 3, 0, 0), (3, 9, 0, 0),  # out of order, unknown 9
    )  # fmt: skip
    found = delivery(rows, [1, 2, 3], subscribers=5)  # subscriber 4 received nothing
    assert found == Delivery(
        stored=3,
        announced=3,
        subscribers=5,
        complete=1,
        missing=1 + 3,
        doubled=1,
        unknown=1,
        out_of_order=2,
    )


def test_a_superseded_state_is_optional_and_the_stored_one_is_required() -> None:
    # Second 7 was announced as id 7, grew, and came back as id 8 (the one stored now).
    # Subscriber 1's server read the commit after the second grew: it got only the newer state.
    rows = received((0, 7, 0, 0), (0, 8, 0, 0), (1, 8, 0, 0), (2, 7, 0, 0))
    found = delivery(rows, [8], subscribers=3, announced=[7, 8])
    assert found == Delivery(stored=1, announced=2, subscribers=3, complete=2, missing=1, skipped=1)


def test_the_client_reads_id_and_price_of_a_message_and_dumps_what_the_bench_loads(
    tmp_path: Path,
) -> None:
    message = {
        "id": "1",
        "type": "next",
        "payload": {"data": {"priceUpdates": {"id": "4711", "priceUsd": "93412.57000000"}}},
    }
    assert read_price(json.dumps(message, separators=(",", ":")).encode()) == (4711, 93412.57)
    price_id, price = read_price(b'{"id":"1","type":"next","payload":{"errors":[]}}')
    assert price_id == -1
    assert math.isnan(price)

    record = Record()
    record.connections.extend((3, 4))
    record.ids.extend((10, 11))
    record.times.extend((1.5, 2.5))
    record.prices.extend((100.01, 100.02))
    assert record.dump(tmp_path / "r.bin") == 2
    loaded = Received.load(tmp_path / "r.bin")
    assert list(loaded.connections) == [3, 4]
    assert list(loaded.ids) == [10, 11]
    assert list(loaded.times) == [1.5, 2.5]
    assert list(loaded.prices) == [100.01, 100.02]


def outcome(missing: int = 0) -> Outcome:
    return Outcome(
        subscribers=1000,
        pairs=20,
        rate=200,
        duration=60,
        trades_sent=11_994,
        latency=Latencies(
            seconds=[0.01 * i for i in range(1, 101)],
            to_publish=[0.005 * i for i in range(1, 101)],
            from_publish=[0.002 * i for i in range(1, 101)],
            by_second=3,
            before=7,
            superseded=12,
        ),
        delivery=Delivery(stored=1200, subscribers=1000, complete=1000, missing=missing),
        worker_cpu=30.0,
        server_cpu=45.0,
        client_cpu=12.0,
        messages=1_200_000,
        started=T0,
        machine="2 vCPUs",
    )


def test_the_report_gives_latency_loss_and_cpu() -> None:
    lines = report(outcome())
    text = "\n".join(lines)
    assert "1,000 subscribers" in text
    assert "199.9 trades/s sent" in text
    row = next(line for line in lines if line.startswith("| 500 "))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    # p50, p99, max ms, messages, lost, doubled, out of order, worker, server, µs/msg
    assert cells == ["500", "990", "1,000", "100", "0", "0", "0", "50%", "75%", "37.5"]
    assert "0 lost" in text
    assert "matched by price for 97 messages, by (coin, second) for 3" in text
    assert "12 messages carried a second's earlier state" in text
    assert "(the worker) p50 250 ms, p99 495 ms" in text
    assert "(the server) p50 100 ms, p99 198 ms" in text
    assert "**5 LOST**" in "\n".join(report(outcome(missing=5)))


def test_write_replaces_the_live_figures_and_keeps_the_prose(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Figures\n\n## Other\n\ntext\n")
    write_figures(["--subscribers", "10"], ["first"], path)
    text = path.read_text()
    assert text.startswith("# Figures\n\n## Other\n\ntext\n\n## Live: exchange trade to subscriber")
    assert "`.venv/bin/python -m bench.live --subscribers 10`" in text
    path.write_text(text.replace("## Live: exchange", "Prose stays.\n\n## Live: exchange"))
    write_figures([], ["second"], path)
    text = path.read_text()
    assert "Prose stays." in text
    assert "second" in text
    assert "first" not in text
    assert text.count(BEGIN) == text.count(END) == 1


def test_without_a_streaming_source_it_stops_saying_so(monkeypatch: pytest.MonkeyPatch) -> None:
    real = plugin.installed_sources()["binance"]
    assert real.plugin is not None
    silent = InstalledSource(real.entry_point, dataclasses.replace(real.plugin, stream=None))
    monkeypatch.setattr(plugin, "installed_sources", lambda: {"binance": silent})
    with pytest.raises(StreamUnavailable, match="declares no stream"):
        bench.live.check_streaming_source()
    monkeypatch.setattr(plugin, "installed_sources", lambda: {})
    with pytest.raises(StreamUnavailable, match="not installed"):
        bench.live.check_streaming_source()


async def test_the_paced_exchange_stamps_each_trade_with_its_send_and_notes_it() -> None:
    fake = PacedExchange(["BTCUSDT", "ETHUSDT"], rate=2000, trades=8)
    with fake:
        url = f"{fake.ws_url('binance')}/stream?streams=btcusdt@trade/ethusdt@trade"
        async with connect(url) as ws:
            frames = [json.loads(await ws.recv())["data"] for _ in range(8)]
        assert fake.finished.wait(10)
        sent = fake.sent()
    assert [f["s"] for f in frames] == ["BTCUSDT", "ETHUSDT"] * 4
    assert [t.symbol for t, _ in sent] == [f["s"] for f in frames]
    for frame, (traded, at) in zip(frames, sent, strict=True):
        assert frame["t"] == traded.trade_id
        assert Decimal(frame["p"]) == traded.price
        assert frame["T"] <= at * 1000 + 1  # stamped when published, before it was sent
    assert [t.price for t, _ in sent if t.symbol == "BTCUSDT"] == [
        Decimal("93412.57"), Decimal("93412.58"), Decimal("93412.59"), Decimal("93412.60")
    ]  # fmt: skip
    assert fake.published("binance", "ETHUSDT") == [t for t, _ in sent if t.symbol == "ETHUSDT"]
