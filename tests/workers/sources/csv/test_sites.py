"""CSV exports as people download them from popular sites, read by their layout.

The files in tests/fixtures/csv/ are small ones of our own, written in each site's layout (header
names and order, quoting, number and date spellings, file names) as found in public samples:
Investing.com, CoinMarketCap (older and current export), CoinCodex (older and current),
CryptoDataDownload (Binance, Bitstamp), Binance public klines (no header; milliseconds and, since
2025, microseconds), Kraken OHLCVT (no header), CryptoCompare, Coinbase candles, Yahoo, Kaggle.
The real third-party files of the shared folder are read too (`test_real_files_...`).
"""

from __future__ import annotations

import csv
import re
import shutil
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.support.real_fixtures import REAL_FIXTURES, real_files
from tests.workers.sources.csv.test_source import read_one, run, write
from workers.sources.base import SourceError
from workers.sources.csv import CsvSource
from workers.sources.csv.layout import asset_from_file_name, read_layout, split_pair

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "csv"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# file -> (symbol, name, quote), rows read, rows refused, first record's fields
SITES: dict[str, tuple[tuple[str | None, str | None, str | None], int, int, dict[str, Any]]] = {
    "Bitcoin Historical Data.csv": (  # Investing.com: MM/DD/YYYY, "Vol." in coins
        (None, "Bitcoin", None), 5, 0,
        {"observed_at": at("2024-01-16"), "price_usd": "43137.0", "open_usd": "42511.1",
         "high_usd": "43566.0", "volume_24h_usd": None},
    ),
    "ETH_USD Bitfinex Historical Data.csv": (  # Investing.com, day first, BOM, CRLF
        ("ETH", None, None), 3, 0,
        {"observed_at": at("2025-06-19"), "price_usd": "105043.5", "low_usd": "104492.9"},
    ),
    "Solana Historical Data (1).csv": (  # Investing.com, month names, a copy mark
        (None, "Solana", None), 2, 0,
        {"observed_at": at("2024-03-05"), "price_usd": "122.63"},
    ),
    "ETH-USD_coinmarketcap.csv": (  # CoinMarketCap before 2022: "Open*", "$1,234.56 "
        ("ETH", None, None), 3, 0,
        {"observed_at": at("2021-12-31"), "price_usd": "3682.63", "open_usd": "3713.43",
         "volume_24h_usd": "13057361120", "market_cap_usd": "437926016117"},
    ),
    "XCP-USD_coinmarketcap.csv": (  # CoinMarketCap, "17-Jul-24" dates
        ("XCP", None, None), 2, 0,
        {"observed_at": at("2024-07-17"), "price_usd": "8.25", "volume_24h_usd": "30114"},
    ),
    "Bitcoin_1_1_2024-12_31_2024_historical_data_coinmarketcap.csv": (  # current export
        (None, "Bitcoin", None), 2, 0,
        {"observed_at": at("2024-12-31T23:59:59.999"), "price_usd": "93429.20",
         "market_cap_usd": "1850678488262.67", "volume_24h_usd": "43625106842.72"},
    ),
    "Shiba Inu_10_1_2025-10_3_2025_historical_data_coinmarketcap.csv": (
        (None, "Shiba Inu", None), 2, 0,
        {"observed_at": at("2025-10-03T23:59:59.999"), "price_usd": "0.00001287"},
    ),
    "bitcoin_2024-01-01_2024-01-03.csv": (  # CoinCodex: Start,End,...
        (None, "bitcoin", None), 2, 0,
        {"observed_at": at("2024-01-02"), "price_usd": "44946.91",
         "market_cap_usd": "880352111873.42"},
    ),
    "coincodex_ethusd_2021-7-1_2021-7-31.csv": (  # CoinCodex before: "Jul-31-2021"
        ("ETH", None, None), 2, 0,
        {"observed_at": at("2021-07-31"), "price_usd": "2536.21", "volume_24h_usd": "19345123012"},
    ),
    "Binance_ETHUSDT_1h.csv": (  # CryptoDataDownload: banner, ms, "ETH/USDT"
        ("ETH", None, "USDT"), 2, 0,
        {"observed_at": at("2024-01-01T05:00"), "price_usd": "2296.83",
         "volume_24h_usd": "10372811.30512"},
    ),
    "Bitstamp_BTCUSD_d.csv": (  # CryptoDataDownload's Bitstamp: seconds, "Volume USD"
        ("BTC", None, None), 2, 0,
        {"observed_at": at("2022-03-01"), "price_usd": "44420.00", "volume_24h_usd": "136883744.7"},
    ),
    "BTCUSDT-1d-2024-01.csv": (  # Binance klines: no header, milliseconds
        ("BTC", None, "USDT"), 2, 0,
        {"observed_at": at("2024-01-01"), "price_usd": "44179.55000000",
         "volume_24h_usd": "1169995682.06254970"},
    ),
    "ETHUSDT-1h-2025-01-01.csv": (  # Binance spot klines since 2025: microseconds
        ("ETH", None, "USDT"), 2, 0,
        {"observed_at": at("2025-01-01"), "price_usd": "3344.90000000"},
    ),
    "XBTUSD_1440.csv": (  # Kraken OHLCVT: no header, XBT is BTC, volume in coins
        ("BTC", None, None), 3, 0,
        {"observed_at": at("2013-10-06"), "price_usd": "122.0", "volume_24h_usd": None},
    ),
    "cryptocompare_BTC-USD_daily.csv": (  # CryptoCompare: volumeto is the USD volume
        ("BTC", None, None), 2, 0,
        {"observed_at": at("2021-01-01"), "price_usd": "29359.9", "high_usd": "29600.63",
         "volume_24h_usd": "1203101225.91"},
    ),
    "coinbase_SOL-USD.csv": (  # Coinbase candles: time, low, high, open, close, volume
        ("SOL", None, None), 2, 0,
        {"observed_at": at("2024-03-05"), "price_usd": "122.63", "low_usd": "112.88",
         "open_usd": "130.49", "volume_24h_usd": None},
    ),
    "ADA-USD.csv": (  # Yahoo: "null" rows
        ("ADA", None, None), 2, 1,
        {"observed_at": at("2021-04-16"), "price_usd": "1.376912", "volume_24h_usd": "5384051130"},
    ),
    "coin_Dogecoin.csv": (  # Kaggle
        ("DOGE", "Dogecoin", None), 2, 0,
        {"observed_at": at("2013-12-16T23:59:59"), "price_usd": "0.000204999998095445",
         "market_cap_usd": "1509085.5"},
    ),
    "XRP-USD.csv": (  # semicolons, decimal commas, "31.12.2023"
        ("XRP", None, None), 2, 0,
        {"observed_at": at("2023-12-31"), "price_usd": "0.6155", "volume_24h_usd": "1234567.89"},
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(SITES))
async def test_a_site_export_is_read_by_its_layout(name: str) -> None:
    (symbol, coin, quote), read, refused, first = SITES[name]
    result = await read_one(FIXTURES / name)
    assert len(result.records) == read
    assert len(result.rejected) == refused
    assert {(r.symbol, r.name, r.extra.get("quote")) for _, r in result.records} == {
        (symbol, coin, quote)
    }
    record = result.records[0][1]
    for field_name, expected in first.items():
        value = getattr(record, field_name)
        assert value == (Decimal(expected) if isinstance(expected, str) else expected), field_name


def test_the_fixtures_are_all_checked() -> None:
    assert {path.name for path in FIXTURES.glob("*.csv")} == set(SITES)


async def test_investing_volumes_and_percentages_stay_in_extra_as_written() -> None:
    result = await read_one(FIXTURES / "Bitcoin Historical Data.csv")
    record = result.records[0][1]
    assert record.extra == {"Vol.": "54.12K", "Change %": "1.47%"}  # "Vol." counts coins
    assert record.volume_24h_usd is None


async def test_a_coinmarketcap_quote_id_in_the_name_column_is_not_a_coin() -> None:
    source = CsvSource(
        [str(FIXTURES / "Shiba Inu_10_1_2025-10_3_2025_historical_data_coinmarketcap.csv")]
    )
    result = await run(source)
    record = result.records[0][1]
    assert (record.symbol, record.name, record.source_asset_id) == (None, "Shiba Inu", "shiba-inu")
    assert record.extra["name"] == "2781"  # kept as written, not a coin
    layout = result.batches[0].meta["layout"]
    assert layout["file_name_asset"] == {"symbol": None, "name": "Shiba Inu", "quote": None}


async def test_a_numeric_name_column_without_a_coin_in_the_file_name_is_refused(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "export.csv", "timestamp;name;close\n2024-01-01T00:00:00Z;2781;1.5\n")
    with pytest.raises(SourceError, match=r"numeric ids \('2781'\), not coin names"):
        await read_one(path)


async def test_names_that_are_words_still_name_the_row_coin(tmp_path: Path) -> None:
    text = "timeOpen;name;close;timestamp\n2024-01-01T00:00:00Z;Bitcoin;42000.5;2024-01-01\n"
    result = await read_one(write(tmp_path, "Ethereum_1_1_2024-1_2_2024_historical_data.csv", text))
    assert result.records[0][1].name == "Bitcoin"  # the rows win over the file name


async def test_microsecond_and_millisecond_klines_fall_on_the_same_instants(tmp_path: Path) -> None:
    row = "{t},1.0,2.0,0.5,1.5,10,{c},15,3,5,7.5,0\n"
    ms = write(tmp_path, "BTCUSDT-1h-2024-12-31.csv", row.format(t=1735689600000, c=1735693199999))
    us = write(
        tmp_path, "BTCUSDT-1h-2025-01-01.csv", row.format(t=1735689600000000, c=1735693199999999)
    )
    times = [(await read_one(path)).records[0][1].observed_at for path in (ms, us)]
    assert times == [at("2025-01-01")] * 2


async def test_headerless_candles_take_the_column_order_their_values_allow(tmp_path: Path) -> None:
    # time, low, high, open, close: only that order keeps low <= open, close <= high here.
    coinbase = write(tmp_path, "SOL-USD.csv", "1709596800,112.88,133.42,130.49,122.63,2145.5\n")
    [(item, record)] = (await read_one(coinbase)).records
    assert (record.low_usd, record.high_usd, record.open_usd, record.price_usd) == (
        Decimal("112.88"), Decimal("133.42"), Decimal("130.49"), Decimal("122.63"),
    )  # fmt: skip
    assert item.payload["base_volume"] == "2145.5"
    plain = write(tmp_path, "ETH-USD.csv", "1709596800,130.49,133.42,112.88,122.63,2145.5\n")
    [(_, record)] = (await read_one(plain)).records
    assert (record.open_usd, record.high_usd, record.low_usd) == (
        Decimal("130.49"), Decimal("133.42"), Decimal("112.88"),
    )  # fmt: skip


async def test_a_headerless_file_of_no_known_layout_is_refused_clearly(tmp_path: Path) -> None:
    path = write(tmp_path, "BTC-USD.csv", "1709596800,1,2,3,4,5,6,7,8\n")
    with pytest.raises(SourceError) as caught:
        await read_one(path)
    message = str(caught.value)
    assert "no header line" in message
    assert "binance-klines: 12 columns" in message
    assert "first row: ['1709596800'" in message


async def test_headerless_layouts_report_no_drift(tmp_path: Path) -> None:
    result = await read_one(FIXTURES / "BTCUSDT-1d-2024-01.csv")
    assert result.batches[0].drift == ()
    assert result.batches[0].meta["layout"]["headerless_layout"] == "binance-klines"
    assert "ignore" not in result.records[0][1].extra


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"PK\x03\x04\x14\x00", "a ZIP archive"),
        (b"\x1f\x8b\x08\x00", "gzip"),
        ("Date,Close\n2021-01-01,1\n".encode("utf-16"), "UTF-16"),
        ("Date,Close\n2021-01-01,1\n".encode("utf-16-le"), "binary or UTF-16"),
    ],
)
def test_what_is_not_csv_text_is_refused_with_what_it_is(head: bytes, expected: str) -> None:
    with pytest.raises(SourceError, match=expected):
        read_layout("BTC-USD.csv", head, complete=True)


# ---- file names ----


@pytest.mark.parametrize(
    ("file_name", "symbol", "name", "quote"),
    [
        ("Bitcoin Historical Data.csv", None, "Bitcoin", None),
        ("Bitcoin Historical Data (2).csv", None, "Bitcoin", None),
        ("Binance USD Historical Data.csv", None, "Binance USD", None),
        ("BTC USD Bitfinex Historical Data.csv", "BTC", None, "USD"),
        ("Bitcoin_1_1_2024-12_31_2024_historical_data_coinmarketcap.csv", None, "Bitcoin", None),
        ("Bitcoin_01.10.2017-20.03.2025_historical_data_coinmarketcap.csv", None, "Bitcoin", None),
        ("Lido wstETH_30._08_2023_28_ 11_ 2023_historical_data_coinmarketcap.csv.csv", None,
         "Lido wstETH", None),
        ("Bitcoin_1_1_2025-31_3_2026_historical_data_USD.csv", None, "Bitcoin", "USD"),
        ("BTCUSDT-1d-2024-01.csv", "BTC", None, "USDT"),
        ("ETHUSDT-1h-2025-01-15.csv", "ETH", None, "USDT"),
        ("BTCTUSD-1m-2024-01.csv", "BTC", None, "TUSD"),
        ("XBTUSD_1440.csv", "BTC", None, "USD"),
        ("XDGUSD_60.csv", "DOGE", None, "USD"),
        ("bitcoin_2025-11-17_2025-12-17.csv", None, "bitcoin", None),
        ("shiba-inu_2024-01-01_2024-12-31.csv", None, "shiba inu", None),
        ("coincodex_btcusd_2010-8-16_2021-7-31.csv", "BTC", None, "USD"),
        ("BTC-USD (1).csv", "BTC", None, "USD"),
        ("Binance_BTCUSDT_d.csv", "BTC", None, "USDT"),
        ("coin_Bitcoin.csv", None, "Bitcoin", None),
    ],
)  # fmt: skip
def test_site_file_names_name_their_coin(
    file_name: str, symbol: str | None, name: str | None, quote: str | None
) -> None:
    asset = asset_from_file_name(f"/downloads/{file_name}")
    assert asset is not None
    assert (asset.symbol, asset.name, asset.quote) == (symbol, name, quote)


@pytest.mark.parametrize(
    "file_name", ["prices_2024-01-01_2024-06-30.csv", "export (3).csv", "data_2021-01-01.csv"]
)
def test_dated_file_names_without_a_coin_name_none(file_name: str) -> None:
    assert asset_from_file_name(file_name) is None


def test_pairs_without_separator_keep_a_base_of_three_when_they_can() -> None:
    assert split_pair("XBTUSD", strict=False) == ("XBT", "USD")
    assert split_pair("BTCTUSD", strict=False) == ("BTC", "TUSD")
    assert split_pair("OPUSDT", strict=False) == ("OP", "USDT")


# ---- the real files ----

# original file name -> (symbol, name, quote) of every price read from it
REAL_ASSETS = {
    "coin_Bitcoin.csv": ("BTC", "Bitcoin", None),
    "BTC-USD.csv": ("BTC", None, None),
    "Binance_BTCUSDT_d.csv": ("BTC", None, "USDT"),
    "bitcoin_price.csv": (None, "bitcoin", None),
}


def original_name(path: Path) -> str:
    """The file's name where it was downloaded from, as SOURCES.md records it ("owner/repo :
    `coin_Bitcoin.csv`"); else the part of its name before "__" (the fixture names carry the
    layout before and the repository after it, which is not part of a name a user would have)."""
    sources = REAL_FIXTURES / "SOURCES.md"
    if sources.is_file():
        for line in sources.read_text().splitlines():
            found = re.match(r"\| `([^`]+)` \| [^|]*?: `([^`]+)`", line)
            if found is not None and found.group(1) == path.name:
                return Path(found.group(2)).name
    return path.name.split("__")[0] + ".csv"


@pytest.mark.parametrize("path", real_files("csv_*.csv"))
async def test_real_files_under_their_original_name_lose_no_row(path: Path, tmp_path: Path) -> None:
    copy = tmp_path / original_name(path)
    shutil.copyfile(path, copy)
    source = CsvSource([str(copy)], batch_size=500)
    result = await run(source)
    layout = source.layout(str(copy))
    assert layout is not None
    assert layout.columns.keys() >= {"observed_at", "price_usd"}
    assert result.records
    rows = data_rows(copy)
    assert len(result.items) == len(rows)  # every data row became an item
    assert len(result.records) + len(result.rejected) == len(rows)
    nulls = sum(1 for row in rows if "null" in row)
    assert len(result.rejected) == nulls
    assets = {(r.symbol, r.name, r.extra.get("quote")) for _, r in result.records}
    expected = REAL_ASSETS.get(copy.name)
    if expected is not None:
        assert assets == {expected}
    else:
        assert len(assets) == 1
        assert all(symbol or name for symbol, name, _ in assets)


def data_rows(path: Path) -> list[list[str]]:
    """The file's non-blank rows after its header (and a banner line), by the standard library."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    start = 2 if rows and rows[0][0].startswith("http") else 1
    return rows[start:]
