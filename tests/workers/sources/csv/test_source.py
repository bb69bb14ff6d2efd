"""The CSV source: layouts, column mapping, refusals, row errors and resumable checkpoints."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.support.real_fixtures import real_files
from workers.sources.base import Batch, PriceRecord, RecordError, Source, SourceError, SourceItem
from workers.sources.csv import DEFAULT_BATCH_SIZE, CsvSource, open_file, stream_key
from workers.sources.csv import layout as csv_layout
from workers.sources.csv.layout import asset_from_file_name, split_pair

KAGGLE = (
    "SNo,Name,Symbol,Date,High,Low,Open,Close,Volume,Marketcap\n"
    "1,Bitcoin,BTC,2013-04-29 23:59:59,147.48800659179688,134.0,134.44400024414062,"
    "144.5399932861328,0.0,1603768864.5\n"
    "2,Bitcoin,BTC,2013-04-30 23:59:59,146.93,134.05,144.0,139.0,0.0,1542813125.0\n"
)


@dataclass
class Run:
    """Everything one pass over a source produced."""

    batches: list[Batch] = field(default_factory=list)
    records: list[tuple[SourceItem, PriceRecord]] = field(default_factory=list)
    rejected: list[tuple[SourceItem, str]] = field(default_factory=list)

    @property
    def items(self) -> list[SourceItem]:
        return [item for batch in self.batches for item in batch.items]

    @property
    def prices(self) -> list[Decimal]:
        return [record.price_usd for _, record in self.records]


def write(directory: Path, name: str, text: str, *, encoding: str = "utf-8") -> Path:
    path = directory / name
    path.write_bytes(text.encode(encoding))
    return path


async def run(source: CsvSource, checkpoints: dict[str, Any] | None = None) -> Run:
    result = Run()
    async for batch in source.batches(checkpoints):
        result.batches.append(batch)
        for item in batch.items:
            try:
                result.records.append((item, source.parse(item)))
            except RecordError as exc:
                result.rejected.append((item, str(exc)))
    return result


async def read_one(path: Path, **kwargs: Any) -> Run:
    return await run(CsvSource([str(path)], **kwargs))


def test_the_source_satisfies_the_pipeline_protocol() -> None:
    source: Source = CsvSource([])
    assert source.name == "csv"
    assert CsvSource.multi_stream is True
    assert CsvSource([]).batch_size == DEFAULT_BATCH_SIZE == 5_000


# --- layouts -------------------------------------------------------------------------------


async def test_kaggle_rows_keep_raw_payload_origin_and_exact_values(tmp_path: Path) -> None:
    path = write(tmp_path, "coin_Bitcoin.csv", KAGGLE)
    result = await read_one(path)
    item, record = result.records[0]
    assert item.payload["Close"] == "144.5399932861328"
    assert list(item.payload) == KAGGLE.splitlines()[0].split(",")
    assert item.origin == f"{path}:2"
    assert result.records[1][0].origin == f"{path}:3"
    assert record.price_usd == Decimal("144.5399932861328")
    assert record.high_usd == Decimal("147.48800659179688")
    assert record.market_cap_usd == Decimal("1603768864.5")
    assert record.volume_24h_usd == Decimal("0.0")
    assert record.observed_at == datetime(2013, 4, 29, 23, 59, 59, tzinfo=UTC)
    assert (record.symbol, record.name, record.source_asset_id) == ("BTC", "Bitcoin", "BTC:bitcoin")
    assert record.extra == {"SNo": "1"}


async def test_a_file_of_several_coins_takes_the_asset_per_row(tmp_path: Path) -> None:
    text = (
        "Date,Symbol,Name,Close\n"
        "2021-01-01,BTC,Bitcoin,29000\n"
        "2021-01-01,ETH,Ethereum,730.5\n"
        "2021-01-01,UNI,Uniswap,5.1\n"
    )
    result = await read_one(write(tmp_path, "coin_Bitcoin.csv", text))
    assert [(r.symbol, r.name, r.source_asset_id) for _, r in result.records] == [
        ("BTC", "Bitcoin", "BTC:bitcoin"),
        ("ETH", "Ethereum", "ETH:ethereum"),
        ("UNI", "Uniswap", "UNI:uniswap"),
    ]


async def test_yahoo_null_rows_are_rejected_with_a_reason_and_the_file_goes_on(
    tmp_path: Path,
) -> None:
    text = (
        "Date,Open,High,Low,Close,Adj Close,Volume\n"
        "2020-10-08,10669.58,10939.80,10534.23,10923.63,10923.63,21962121001\n"
        "2020-10-09,null,null,null,null,null,null\n"
        "2020-10-10,11059.14,11442.21,11056.94,11296.36,11296.36,22877978588"  # no newline
    )
    result = await read_one(write(tmp_path, "BTC-USD.csv", text))
    assert len(result.items) == 3
    assert result.prices == [Decimal("10923.63"), Decimal("11296.36")]
    [(item, reason)] = result.rejected
    assert item.payload == dict.fromkeys(item.payload, "null") | {"Date": "2020-10-09"}
    assert "Close" in reason
    assert "null" in reason
    record = result.records[0][1]
    assert (record.symbol, record.name, record.source_asset_id) == ("BTC", None, "BTC")
    assert record.extra == {"Adj Close": "10923.63"}  # close preferred over adj close


async def test_cryptodatadownload_banner_ms_times_newest_first_and_quote_volume(
    tmp_path: Path,
) -> None:
    text = (
        "https://www.CryptoDataDownload.com\n"
        "Unix,Date,Symbol,Open,High,Low,Close,Volume BTC,Volume USDT,tradecount\n"
        "1680134400000,2023-03-30,BTCUSDT,28348.6,29184.68,27686.0,28028.53,98865.43256,"
        "2808471938.6424427,1843652\n"
        "1680048000000,2023-03-29,BTCUSDT,27261.06,28650.0,27240.1,28348.6,89486.16008,"
        "2519887866.2111588,1704217\n"
    )
    path = write(tmp_path, "Binance_BTCUSDT_d.csv", text)
    source = CsvSource([str(path)])
    result = await run(source)
    assert [r.observed_at for _, r in result.records] == [
        datetime(2023, 3, 30, tzinfo=UTC),
        datetime(2023, 3, 29, tzinfo=UTC),
    ]
    record = result.records[0][1]
    assert result.records[0][0].origin == f"{path}:3"
    assert (record.symbol, record.source_asset_id) == ("BTC", "BTC")
    assert record.volume_24h_usd == Decimal("2808471938.6424427")
    assert record.extra["quote"] == "USDT"
    assert record.extra["volume_column"] == "Volume USDT"
    assert record.extra["Volume BTC"] == "98865.43256"
    layout = result.batches[0].meta["layout"]
    assert layout["header_line"] == 2
    assert layout["volume_column"] == "Volume USDT"


async def test_coinmarketcap_dates_thousands_separators_and_dash_volumes(tmp_path: Path) -> None:
    text = (
        "Date,Open,High,Low,Close,Volume,Market Cap\n"
        '"Sep 05, 2017","4,228.29",4427.84,3998.11,"4,597.12","2,697,970,000","69,954,400,000"\n'
        '"Apr 28, 2013",135.30,135.98,132.10,134.21,-,"1,500,520,000"\n'
    )
    result = await read_one(write(tmp_path, "bitcoin_price.csv", text))
    first, last = (record for _, record in result.records)
    assert first.observed_at == datetime(2017, 9, 5, tzinfo=UTC)
    assert first.price_usd == Decimal("4597.12")
    assert first.open_usd == Decimal("4228.29")
    assert first.volume_24h_usd == Decimal("2697970000")
    assert first.market_cap_usd == Decimal("69954400000")
    assert last.volume_24h_usd is None
    assert (first.symbol, first.name, first.source_asset_id) == (None, "bitcoin", "bitcoin")


@pytest.mark.parametrize(
    ("name", "text", "encoding"),
    [
        ("semicolon.csv", "Date;Symbol;Close\n2021-01-01;BTC;29000.5\n", "utf-8"),
        ("tabs.csv", "Date\tSymbol\tClose\n2021-01-01\tBTC\t29000.5\n", "utf-8"),
        ("pipes.csv", "Date|Symbol|Close\n2021-01-01|BTC|29000.5\n", "utf-8"),
        ("bom.csv", "\ufeffDate,Symbol,Close\n2021-01-01,BTC,29000.5\n", "utf-8"),
        ("crlf.csv", "Date,Symbol,Close\r\n2021-01-01,BTC,29000.5\r\n", "utf-8"),
        ("cr.csv", "Date,Symbol,Close\r2021-01-01,BTC,29000.5\r", "utf-8"),
        ("comma_decimal.csv", "Date;Symbol;Close\n2021-01-01;BTC;29.000,5\n", "utf-8"),
        ("cp1252.csv", "Date,Symbol,Close,Note\n2021-01-01,BTC,29000.5,caf\u00e9\n", "cp1252"),
    ],
)
async def test_delimiters_bom_line_endings_and_encodings(
    tmp_path: Path, name: str, text: str, encoding: str
) -> None:
    result = await read_one(write(tmp_path, name, text, encoding=encoding))
    [(item, record)] = result.records
    assert record.price_usd == Decimal("29000.5")
    assert record.observed_at == datetime(2021, 1, 1, tzinfo=UTC)
    assert record.symbol == "BTC"
    assert "Date" in item.payload


@pytest.mark.parametrize(
    ("header", "row", "expected"),
    [
        ("Time,Close Price,Market Cap", "2021-01-01,1.5,100", {"market_cap_usd": "100"}),
        ("timestamp,close_usd,24h Volume", "1609459200,1.5,7", {"volume_24h_usd": "7"}),
        ("unix,price,marketcap", "1609459200000,1.5,9", {"market_cap_usd": "9"}),
        ("DATE, CLOSE ,VOLUME", "2021-01-01, 1.5 ,3", {"volume_24h_usd": "3"}),
        ("date_time,closePrice,open-price", "2021-01-01T00:00:00Z,1.5,1.2", {"open_usd": "1.2"}),
        ("Date(UTC),Close (USD),Volume (BTC),Volume (USD)", "2021-01-01,1.5,2,8",
         {"volume_24h_usd": "8"}),
        ("time,price,low,high", "2021-01-01 00:00,1.5,1.1,1.9", {"low_usd": "1.1"}),
    ],
)  # fmt: skip
async def test_header_variants_map_by_name(
    tmp_path: Path, header: str, row: str, expected: dict[str, str]
) -> None:
    result = await read_one(write(tmp_path, "BTC-USD.csv", f"{header}\n{row}\n"))
    [(_, record)] = result.records
    assert record.price_usd == Decimal("1.5")
    assert record.observed_at == datetime(2021, 1, 1, tzinfo=UTC)
    for field_name, value in expected.items():
        assert getattr(record, field_name) == Decimal(value)


async def test_unmapped_columns_are_kept_in_extra(tmp_path: Path) -> None:
    text = "Date,Close,Adj Close,Trades,Comment\n2021-01-01,2,1.9,17,\n"
    result = await read_one(write(tmp_path, "ETH-USD.csv", text))
    [(_, record)] = result.records
    assert record.extra == {"Adj Close": "1.9", "Trades": "17"}  # empty cells left out


async def test_times_with_an_offset_become_utc(tmp_path: Path) -> None:
    text = "time,price\n2021-01-01T02:00:00+02:00,1\n2021-01-01 00:00:00,2\n"
    result = await read_one(write(tmp_path, "BTC-USD.csv", text))
    assert [r.observed_at for _, r in result.records] == [datetime(2021, 1, 1, tzinfo=UTC)] * 2
    assert all(r.observed_at.utcoffset() is not None for _, r in result.records)


@pytest.mark.parametrize(
    ("file_name", "symbol", "name", "quote"),
    [
        ("coin_Bitcoin.csv", None, "Bitcoin", None),
        ("BTC-USD.csv", "BTC", None, "USD"),
        ("Binance_BTCUSDT_d.csv", "BTC", None, "USDT"),
        ("Bitstamp_ETHUSD_1h.csv", "ETH", None, "USD"),
        ("bitcoin_price.csv", None, "bitcoin", None),
        ("bitcoin_cash_price.csv", None, "bitcoin cash", None),
        ("csv_cmc_kaggle2017_bitcoin_price__owner_repo.csv", None, "bitcoin", None),
        ("ETH.csv", "ETH", None, None),
        ("eth_usdt.csv", "ETH", None, "USDT"),
        ("csv_yahoo_BTC-USD_with_nulls__owner_repo.csv", "BTC", None, "USD"),
    ],
)
def test_the_file_name_names_the_asset(
    file_name: str, symbol: str | None, name: str | None, quote: str | None
) -> None:
    asset = asset_from_file_name(f"/data/{file_name}")
    assert asset is not None
    assert (asset.symbol, asset.name, asset.quote) == (symbol, name, quote)


@pytest.mark.parametrize(
    "file_name",
    ["prices.csv", "a_prices.csv", "historical_price.csv", "export-2021.csv", "data.csv"],
)
def test_a_file_name_without_a_coin_names_none(file_name: str) -> None:
    assert asset_from_file_name(file_name) is None


@pytest.mark.parametrize(
    ("text", "hint", "expected"),
    [
        ("BTCUSDT", "USDT", ("BTC", "USDT")),
        ("BTC/USD", None, ("BTC", "USD")),
        ("eth-eur", None, ("ETH", "EUR")),
        ("STETH", None, ("STETH", None)),  # a coin, not ST priced in ETH
        ("TUSD", None, ("TUSD", None)),
        ("BTC", "USDT", ("BTC", None)),
    ],
)
def test_pairs_split_only_on_evidence(
    text: str, hint: str | None, expected: tuple[str, str | None]
) -> None:
    assert split_pair(text, hint) == expected


async def test_a_row_quoted_in_another_currency_is_rejected(tmp_path: Path) -> None:
    text = "Date,Symbol,Close\n2021-01-01,ETH/BTC,0.025\n2021-01-01,ETH/USDT,730\n"
    result = await read_one(write(tmp_path, "pairs.csv", text))
    [(_, reason)] = result.rejected
    assert "BTC" in reason
    assert "not USD" in reason
    [(_, record)] = result.records
    assert (record.symbol, record.extra["quote"]) == ("ETH", "USDT")


# --- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("BTC-USD.csv", "Close,Volume\n1,2\n", "no time column"),
        ("BTC-USD.csv", "Date,Volume\n2021-01-01,2\n", "no price column"),
        ("prices.csv", "Date,Close\n2021-01-01,2\n", "no asset"),
        ("BTC-USD.csv", "Date,Close,close\n2021-01-01,2,3\n", "ambiguous"),
        ("BTC-USD.csv", "Date,Close EUR\n2021-01-01,2\n", "not in USD"),
        ("ETH-EUR.csv", "Date,Close\n2021-01-01,2\n", "quoted in EUR"),
        ("BTC-USD.csv", "", "empty file"),
    ],
)
async def test_an_unmappable_file_is_refused_with_what_is_missing(
    tmp_path: Path, name: str, text: str, expected: str
) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(SourceError) as caught:
        await read_one(path)
    message = str(caught.value)
    assert str(path) in message
    assert expected in message
    if text:
        assert message.endswith(f"headers seen: {text.splitlines()[0].split(',')}")


async def test_a_refused_file_does_not_stop_the_others(tmp_path: Path) -> None:
    write(tmp_path, "a_prices.csv", "Date,Close\n2021-01-01,2\n")
    write(tmp_path, "b_BTC-USD.csv", "Date,Close\n2021-01-01,2\n")
    source = CsvSource([str(tmp_path / "*.csv")])
    seen: list[Batch] = []

    async def consume() -> None:
        async for batch in source.batches(None):
            seen.append(batch)

    with pytest.raises(SourceError, match=r"a_prices\.csv: no asset"):
        await consume()
    assert [batch.stream for batch in seen] == [stream_key(tmp_path / "b_BTC-USD.csv")]


async def test_a_missing_literal_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"missing\.csv: cannot open"):
        await read_one(tmp_path / "missing.csv")
    with pytest.raises(SourceError, match="no such file"):
        open_file(tmp_path / "missing.csv")


async def test_open_file_reads_exactly_that_file(tmp_path: Path) -> None:
    path = write(tmp_path, "coin_Bitcoin.csv", KAGGLE)
    write(tmp_path, "other_BTC-USD.csv", "Date,Close\n2021-01-01,2\n")
    result = await run(open_file(path, batch_size=1))
    assert [len(batch.items) for batch in result.batches] == [1, 1]
    assert {batch.stream for batch in result.batches} == {stream_key(path)}


# --- rows ----------------------------------------------------------------------------------


async def test_bad_rows_are_rejected_one_by_one(tmp_path: Path) -> None:
    text = (
        "Date,Close,Volume\n"
        "2021-01-01,1,2\n"
        "not a date,1,2\n"
        "2021-01-03,abc,2\n"
        "2021-01-04,,2\n"
        "2021-01-05,1,-2\n"
        "2021-01-06,0,2\n"
        "2021-01-07,1,2,surplus\n"
        "\n"
        ",,\n"
        "Date,Close,Volume\n"
        "2021-01-08,8,2\n"
    )
    result = await read_one(write(tmp_path, "BTC-USD.csv", text))
    assert len(result.items) == len(result.records) + len(result.rejected) == 8
    assert result.prices == [Decimal(1), Decimal(1), Decimal(8)]
    reasons = [reason for _, reason in result.rejected]
    assert "'not a date' is not a recognised time" in reasons[0]
    assert "'abc' is not a number" in reasons[1]
    assert reasons[2] == "Close: no price ('')"
    assert "not positive" in reasons[3]
    assert reasons[4] == "row has 4 cells, the header has 3"
    assert result.rejected[4][0].payload["column 4"] == "surplus"
    negative = result.records[1][1]  # a bad optional number costs only itself
    assert negative.volume_24h_usd is None
    assert negative.extra["_problems"] == {"Volume": "-2 is negative"}
    assert result.records[2][0].origin.endswith(":12")


async def test_a_fresh_instance_parses_a_stored_item(tmp_path: Path) -> None:
    path = write(tmp_path, "coin_Bitcoin.csv", KAGGLE)
    item = (await read_one(path)).items[0]
    fresh = CsvSource([])
    assert fresh.parse(SourceItem(dict(item.payload), item.origin)).price_usd == Decimal(
        "144.5399932861328"
    )
    gone = SourceItem({"Date": "2021-01-01", "Close": "3"}, f"{tmp_path}/gone/ETH-USD.csv:2")
    assert fresh.parse(gone).symbol == "ETH"


async def test_batches_hold_at_most_batch_size_rows(tmp_path: Path) -> None:
    path = write(tmp_path, "BTC-USD.csv", _days(23))
    result = await read_one(path, batch_size=5)
    assert [len(batch.items) for batch in result.batches] == [5, 5, 5, 5, 3]
    assert [batch.checkpoint["line"] for batch in result.batches] == [6, 11, 16, 21, 24]
    assert result.batches[-1].checkpoint["offset"] == path.stat().st_size
    assert "layout" in result.batches[0].meta
    assert "layout" not in result.batches[1].meta


def test_batch_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        CsvSource([], batch_size=0)


# --- checkpoints ---------------------------------------------------------------------------


def _days(count: int, *, start: int = 1, price: int = 100) -> str:
    rows = "".join(
        f"2021-{1 + (day - 1) // 28:02d}-{1 + (day - 1) % 28:02d},{price + day}\n"
        for day in range(start, start + count)
    )
    return ("Date,Close\n" if start == 1 else "") + rows


def _checkpoints(result: Run) -> dict[str, Any]:
    return {batch.checkpoint_key: batch.checkpoint for batch in result.batches}


@pytest.mark.parametrize("stop_after", [1, 2, 3])
async def test_resuming_after_a_batch_reads_every_row_once(tmp_path: Path, stop_after: int) -> None:
    path = write(tmp_path, "BTC-USD.csv", _days(10))
    source = CsvSource([str(path)], batch_size=3)
    first: list[Batch] = []
    async for batch in source.batches(None):
        first.append(batch)
        if len(first) == stop_after:
            break  # a crash after this batch committed
    assert first[-1].checkpoint["line"] == 1 + 3 * stop_after
    done = {first[-1].checkpoint_key: first[-1].checkpoint}
    rest = await run(CsvSource([str(path)], batch_size=3), done)
    origins = [item.origin for batch in first for item in batch.items] + [
        item.origin for item in rest.items
    ]
    assert origins == [f"{path}:{line}" for line in range(2, 12)]
    assert all("reset" not in batch.meta for batch in rest.batches)


async def test_a_fully_read_unchanged_file_yields_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, "BTC-USD.csv", _days(4))
    done = await read_one(path)
    again = await run(CsvSource([str(path)]), _checkpoints(done))
    assert again.batches == []


async def test_appended_rows_are_read_from_the_offset(tmp_path: Path) -> None:
    path = write(tmp_path, "BTC-USD.csv", _days(4))
    done = await read_one(path)
    with path.open("a") as handle:
        handle.write(_days(2, start=5))
    more = await run(CsvSource([str(path)]), _checkpoints(done))
    assert [item.origin for item in more.items] == [f"{path}:6", f"{path}:7"]
    assert more.prices == [Decimal(105), Decimal(106)]
    assert "reset" not in more.batches[0].meta


async def test_a_row_appended_after_a_last_line_without_newline(tmp_path: Path) -> None:
    path = write(tmp_path, "BTC-USD.csv", _days(3).rstrip("\n"))
    done = await read_one(path)
    assert done.batches[-1].checkpoint["tail_offset"] < path.stat().st_size
    with path.open("a") as handle:
        handle.write("\n" + _days(1, start=4).rstrip("\n"))
    more = await run(CsvSource([str(path)]), _checkpoints(done))
    assert [item.origin for item in more.items] == [f"{path}:5"]
    assert more.prices == [Decimal(104)]


async def test_a_last_line_that_was_still_being_written_is_read_again_whole(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "BTC-USD.csv", "Date,Close\n2021-01-01,101\n2021-01-02,1")
    done = await read_one(path)
    assert done.prices == [Decimal(101), Decimal(1)]
    with path.open("a") as handle:
        handle.write("02.5\n2021-01-03,103\n")
    more = await run(CsvSource([str(path)]), _checkpoints(done))
    assert [item.origin for item in more.items] == [f"{path}:3", f"{path}:4"]
    assert more.prices == [Decimal("102.5"), Decimal(103)]


@pytest.mark.parametrize(
    "change",
    [
        lambda text: text.replace("2021-01-02,102", "2021-01-02,999"),  # covered row edited
        lambda text: text[: len(text) // 2],  # truncated
        lambda text: "https://example.com\n" + text,  # banner added
    ],
    ids=["edited", "truncated", "banner"],
)
async def test_a_changed_file_is_read_again_from_the_start(tmp_path: Path, change: Any) -> None:
    text = _days(6)
    path = write(tmp_path, "BTC-USD.csv", text)
    done = await read_one(path)
    path.write_text(change(text))
    again = await run(CsvSource([str(path)]), _checkpoints(done))
    assert again.batches[0].meta["reset"] == "file changed"
    rows = list(csv.reader(change(text).splitlines()))
    data = [row for row in rows if row and row[0].startswith("2021")]
    assert len(again.items) == len(data)


async def test_a_changed_file_with_no_rows_left_still_reports_the_reset(tmp_path: Path) -> None:
    path = write(tmp_path, "BTC-USD.csv", _days(3))
    done = await read_one(path)
    path.write_text("Date,Close\n")
    again = await run(CsvSource([str(path)]), _checkpoints(done))
    [batch] = again.batches
    assert batch.items == []
    assert batch.meta["reset"] == "file changed"
    assert batch.checkpoint["line"] == 1


async def test_the_checkpoint_describes_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "BTC-USD.csv", _days(3))
    done = await read_one(path)
    checkpoint = done.batches[-1].checkpoint
    stat = path.stat()
    assert checkpoint["path"] == done.batches[-1].stream == str(path.resolve())
    assert (checkpoint["size"], checkpoint["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns)
    assert checkpoint["line"] == 4
    assert checkpoint["offset"] == stat.st_size
    assert len(checkpoint["head_sha256"]) == len(checkpoint["file_sha256_prefix"]) == 64


async def test_files_are_read_in_sorted_order_each_once(tmp_path: Path) -> None:
    for name in ("c_BTC-USD.csv", "a_ETH-USD.csv", "b_SOL-USD.csv"):
        write(tmp_path, name, _days(1))
    source = CsvSource([str(tmp_path / "*.csv"), str(tmp_path / "a_*.csv")])
    result = await run(source)
    assert [r.symbol for _, r in result.records] == ["ETH", "SOL", "BTC"]


async def test_a_large_file_streams_in_batches(tmp_path: Path) -> None:
    path = tmp_path / "BTC-USD.csv"
    with path.open("w") as handle:
        handle.write("timestamp,price\n")
        handle.writelines(f"{1_600_000_000 + minute * 60},{minute % 997 + 1}.5\n"
                          for minute in range(30_000))  # fmt: skip
    source = CsvSource([str(path)], batch_size=7_000)
    sizes = []
    count = 0
    async for batch in source.batches(None):
        sizes.append(len(batch.items))
        count += len([source.parse(item) for item in batch.items])
    assert sizes == [7_000] * 4 + [2_000]
    assert count == 30_000


# --- the real files ------------------------------------------------------------------------

EXPECTED_ASSETS = {  # substring of the fixture name -> (symbol, name, quote)
    "coin_Bitcoin": ("BTC", "Bitcoin", None),
    "BTC-USD": ("BTC", None, None),
    "Binance_BTCUSDT": ("BTC", None, "USDT"),
    "bitcoin_price": (None, "bitcoin", None),
}


@pytest.mark.parametrize("path", real_files("csv_*.csv"))
async def test_real_files_parse_completely(path: Path) -> None:
    source = CsvSource([str(path)], batch_size=700)
    result = await run(source)
    data_rows = _data_rows(path)
    assert len(result.items) == len(data_rows)
    assert len(result.items) == len(result.records) + len(result.rejected)
    nulls = [row for row in data_rows if "null" in row.values()]
    assert len(result.rejected) == len(nulls)
    assert all("no price ('null')" in reason for _, reason in result.rejected)
    assert len({r.observed_at for _, r in result.records}) == len(result.records)
    layout = source.layout(str(path))
    assert layout is not None
    for item, record in result.records:
        _assert_matches_the_text(item, record, layout.columns)
    expected = next((v for k, v in EXPECTED_ASSETS.items() if k in path.name), None)
    if expected is not None:
        symbol, name, quote = expected
        assert {(r.symbol, r.name, r.extra.get("quote")) for _, r in result.records} == {
            (symbol, name, quote)
        }


def _data_rows(path: Path) -> list[dict[str, str]]:
    """The file's data rows read independently with the standard library."""
    with path.open(newline="", encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    start = 1 if lines[0].startswith("http") else 0
    return list(csv.DictReader(lines[start:]))


def _assert_matches_the_text(
    item: SourceItem, record: PriceRecord, columns: dict[str, str]
) -> None:
    assert record.observed_at.utcoffset() is not None
    assert record.observed_at.tzinfo == UTC
    for field_name in ("price_usd", "open_usd", "high_usd", "low_usd", "market_cap_usd"):
        if field_name in columns:
            text = item.payload[columns[field_name]]
            assert getattr(record, field_name) == Decimal(text.replace(",", "")), field_name
    raw_time = item.payload[columns["observed_at"]]
    if raw_time.isdigit():
        expected = datetime.fromtimestamp(int(raw_time) / 1000, tz=UTC)
    elif raw_time[4:5] == "-":
        expected = datetime.fromisoformat(raw_time).replace(tzinfo=UTC)
    else:
        expected = datetime.strptime(raw_time, "%b %d, %Y").replace(tzinfo=UTC)
    assert record.observed_at == expected


async def test_the_header_is_mapped_once_per_file_not_per_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, ...]] = []
    original = csv_layout.map_headers

    def counting(headers: tuple[str, ...]) -> Any:
        calls.append(headers)
        return original(headers)

    monkeypatch.setattr(csv_layout, "map_headers", counting)
    result = await read_one(write(tmp_path, "BTC-USD.csv", _days(50)), batch_size=7)
    assert len(result.records) == 50
    assert calls == [("Date", "Close")]


async def test_a_quoted_cell_may_span_lines(tmp_path: Path) -> None:
    text = 'Date,Close,Note\n2021-01-01,1,"two\nlines"\n2021-01-02,2,x\n'
    path = write(tmp_path, "BTC-USD.csv", text)
    result = await read_one(path)
    assert [item.origin for item in result.items] == [f"{path}:3", f"{path}:4"]
    assert result.records[0][1].extra == {"Note": "two\nlines"}


async def test_semicolon_files_with_us_numbers_keep_their_decimal_point(tmp_path: Path) -> None:
    text = 'Date;Close\n2021-01-01;"4,597.12"\n2021-01-02;4597.5\n'
    result = await read_one(write(tmp_path, "BTC-USD.csv", text))
    assert result.prices == [Decimal("4597.12"), Decimal("4597.5")]


async def test_a_header_after_too_many_banner_lines_is_not_found(tmp_path: Path) -> None:
    text = "banner\n" * 11 + "Date,Close\n2021-01-01,1\n"
    with pytest.raises(SourceError, match="no time column"):
        await read_one(write(tmp_path, "BTC-USD.csv", text))
    ten = "banner\n" * 10 + "Date,Close\n2021-01-01,1\n"
    assert (await read_one(write(tmp_path, "ETH-USD.csv", ten))).prices == [Decimal(1)]


async def test_a_change_beyond_the_head_is_detected_by_the_prefix_hash(tmp_path: Path) -> None:
    rows = [f"{1_600_000_000 + n * 60},{100 + n}.25\n" for n in range(5_000)]
    path = write(tmp_path, "BTC-USD.csv", "timestamp,price\n" + "".join(rows))
    assert len("timestamp,price\n" + "".join(rows[:4_000])) > 64 * 1024
    done = await read_one(path)
    rows[4_000] = rows[4_000].replace(".25", ".75")  # same length, far past the first 64 KiB
    path.write_text("timestamp,price\n" + "".join(rows))
    again = await run(CsvSource([str(path)]), _checkpoints(done))
    assert again.batches[0].meta["reset"] == "file changed"
    assert len(again.records) == 5_000
    assert again.records[4_000][1].price_usd == Decimal("4100.75")
