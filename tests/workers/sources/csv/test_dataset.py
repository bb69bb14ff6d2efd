"""Which provider or dataset a CSV file comes from: given, from its layout, else its name."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.source_names import MAX_DATASET_LENGTH, BadDatasetName, is_dataset_source
from tests.support.real_fixtures import real_files
from workers.sources.csv import CsvSource, dataset_on_disk
from workers.sources.csv.dataset import (
    Dataset,
    DatasetClues,
    cap,
    detect_dataset,
    name_from_file,
)


def detect(file: str, header: str, *, delimiter: str = ",", preamble: str = "") -> Dataset:
    headers = tuple(cell.strip('"') for cell in header.split(delimiter))
    lines = tuple(line for line in preamble.splitlines() if line)
    return detect_dataset(DatasetClues(file, headers, delimiter, lines))


LAYOUTS = [
    # (file name, header, delimiter, banner) -> dataset
    ("coin_Bitcoin.csv", "SNo,Name,Symbol,Date,High,Low,Open,Close,Volume,Marketcap", ",", "",
     "kaggle"),
    ("BTC-USD.csv", "Date,Open,High,Low,Close,Adj Close,Volume", ",", "", "yahoo"),
    ("Binance_BTCUSDT_d.csv",
     "Unix,Date,Symbol,Open,High,Low,Close,Volume BTC,Volume USDT,tradecount", ",",
     "https://www.CryptoDataDownload.com", "cryptodatadownload-binance"),
    ("Bitstamp_ETHUSD_1h.csv", "unix,date,symbol,open,high,low,close,Volume ETH,Volume USD", ",",
     "https://www.CryptoDataDownload.com", "cryptodatadownload-bitstamp-1h"),
    ("gemini.csv", "Unix Timestamp,Date,Symbol,Open,High,Low,Close,Volume", ",",
     "https://www.cryptodatadownload.com/data", "cryptodatadownload"),
    ("bitcoin_price.csv", "Date,Open,High,Low,Close,Volume,Market Cap", ",", "",
     "coinmarketcap"),
    ("Bitcoin_1_1_2024-3_1_2024_historical_data_coinmarketcap.csv",
     "timeOpen;timeClose;timeHigh;timeLow;name;open;high;low;close;volume;marketCap;timestamp",
     ";", "", "coinmarketcap"),
    ("Bitcoin Historical Data.csv", '"Date","Price","Open","High","Low","Vol.","Change %"', ",", "",
     "investing"),
    ("bitcoin_2024-01-01_2024-03-31.csv", "Start,End,Open,High,Low,Close,Volume,Market Cap", ",",
     "", "coincodex"),
    ("histoday.csv", "time,high,low,open,volumefrom,volumeto,close", ",", "", "cryptocompare"),
    ("btc-usd-max.csv", "snapped_at,price,market_cap,total_volume", ",", "", "coingecko"),
    ("BTCUSDT-1d-2024-01.csv", "open_time,open,high,low,close,volume,close_time,quote_volume,"
     "count,taker_buy_volume,taker_buy_quote_volume,ignore", ",", "", "binance-data"),
    ("BTCUSDT-1h-2024-01-15.csv", "open_time,open,high,low,close,volume", ",", "",
     "binance-data-1h"),
    ("XBTUSD_1440.csv", "timestamp,open,high,low,close,volume,trades", ",", "", "kraken"),
    ("ETHUSD_60.csv", "timestamp,open,high,low,close,volume,trades", ",", "", "kraken-60"),
    ("BTC-USD_candles.csv", "time,low,high,open,close,volume", ",", "", "coinbase"),
    ("bitstampUSD_1-min_data_2012-01-01_to_2021-03-31.csv",
     "Timestamp,Open,High,Low,Close,Volume_(BTC),Volume_(Currency),Weighted_Price", ",", "",
     "bitstamp"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("file", "header", "delimiter", "banner", "name"), LAYOUTS, ids=[row[-1] for row in LAYOUTS]
)
def test_a_providers_layout_names_its_dataset(
    file: str, header: str, delimiter: str, banner: str, name: str
) -> None:
    found = detect(f"/data/exports/{file}", header, delimiter=delimiter, preamble=banner)
    assert (found.name, found.how) == (name, "layout")
    assert found.source == f"csv:{name}"
    assert found.provider is not None
    assert name.startswith(found.provider)


def test_the_layout_wins_over_an_unusual_file_name() -> None:
    found = detect("downloads/export (3).csv", "Date,Open,High,Low,Close,Adj Close,Volume")
    assert found.name == "yahoo"


@pytest.mark.parametrize(
    ("names", "dataset"),
    [
        (["prices_2024-01-01_2024-06-30.csv", "prices_2024-01-01_2024-12-31.csv"], "prices"),
        (["my_export.csv", "my_export (1).csv", "my_export copy.csv", "My Export.CSV"],
         "my_export"),
        (["eth-2020-2021.csv", "eth_20200101-20211231.csv", "ETH 2020-01-01 to 2021-12-31.csv"],
         "eth"),
        (["daily_1672531200.csv", "daily_1704067200000.csv"], "daily"),
    ],
)  # fmt: skip
def test_a_re_export_with_other_dates_in_its_name_is_the_same_dataset(
    names: list[str], dataset: str
) -> None:
    headers = "date,close"
    found = {detect(f"/in/{name}", headers).name for name in names}
    # Case and separators aside ("My Export" -> my-export), one name for all of them.
    assert {name.replace("-", "_") for name in found} == {dataset.replace("-", "_")}
    assert all(detect(f"/in/{name}", headers).how == "file name" for name in names)


def test_a_name_of_dates_only_keeps_them_rather_than_nothing() -> None:
    assert name_from_file("2024-01-01.csv") == "2024-01-01"
    assert name_from_file("....csv") == "unnamed"


def test_a_long_name_keeps_its_start_and_a_hash_of_the_whole() -> None:
    long_a, long_b = "a" * 100 + "-one", "a" * 100 + "-two"
    capped = cap(long_a)
    assert len(capped) == MAX_DATASET_LENGTH
    assert capped.startswith("a" * 40)
    assert capped == cap(long_a)  # stable
    assert capped != cap(long_b)
    assert is_dataset_source(f"csv:{capped}")
    assert is_dataset_source(f"csv:{name_from_file('x' * 300 + '.csv')}")


def test_a_given_dataset_wins_and_a_bad_one_is_refused() -> None:
    clues = DatasetClues("BTC-USD.csv", ("Date", "Open", "High", "Low", "Close", "Adj Close"))
    assert detect_dataset(clues, given="broker-a") == Dataset("broker-a", "given")
    with pytest.raises(BadDatasetName, match="lowercase slug"):
        detect_dataset(clues, given="Broker A")
    with pytest.raises(BadDatasetName, match="at most 60"):
        detect_dataset(clues, given="b" * 61)


@pytest.mark.parametrize("path", real_files("csv_*.csv"))
async def test_a_real_file_is_named_after_its_provider(path: Path) -> None:
    """The fixtures are named csv_<provider>_<original name>__<owner>_<repo>.csv: not a name a
    provider writes, so the layout (header, banner) has to say it."""
    provider = path.name.split("_")[1]
    batches = CsvSource([str(path)]).batches({})
    first = await anext(batches)
    await batches.aclose()
    assert first.meta["dataset_from"] == "layout"
    assert first.source.startswith(f"csv:{provider}")
    found = dataset_on_disk(str(path), list(first.items[0].payload))
    assert found is not None
    assert (found.provider, found.source) == (provider, first.source)


async def test_a_files_batches_carry_its_dataset_and_checkpoint_per_dataset(
    tmp_path: Path,
) -> None:
    path = tmp_path / "Binance_BTCUSDT_d.csv"
    path.write_text(
        "https://www.CryptoDataDownload.com\n"
        "Unix,Date,Symbol,Open,High,Low,Close,Volume BTC,Volume USDT,tradecount\n"
        "1680134400000,2023-03-30,BTCUSDT,28348.6,29184.7,27705.9,28033.8,1,2,3\n"
    )
    (batch,) = [batch async for batch in CsvSource([str(path)]).batches({})]
    assert batch.source == "csv:cryptodatadownload-binance"
    assert batch.meta["dataset"] == "cryptodatadownload-binance"
    assert batch.meta["dataset_from"] == "layout"
    assert batch.checkpoint_key == f"csv:cryptodatadownload-binance {path.resolve()}"
    # Its checkpoint resumes it (nothing new); another dataset's key does not.
    resumed = [
        b async for b in CsvSource([str(path)]).batches({batch.checkpoint_key: batch.checkpoint})
    ]
    assert resumed == []
    given = CsvSource([str(path)], dataset="cdd")
    (again,) = [b async for b in given.batches({batch.checkpoint_key: batch.checkpoint})]
    assert (again.source, len(again.items)) == ("csv:cdd", 1)
