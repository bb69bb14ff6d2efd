"""The built-in sources, declared by the same contract as any plugin (`workers/sources/plugin.py`)
and registered the same way: pyproject.toml's `kasparro.sources` entry points name these."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from server.settings import Settings
from workers.sources.coingecko import MARKET_FIELDS
from workers.sources.coinpaprika import TICKER_FIELDS
from workers.sources.plugin import Build, RateLimit, SourcePlugin, StreamHook

if TYPE_CHECKING:
    from workers.runtime import Runtime
    from workers.sources.base import Source
    from workers.sources.csv import FileCoin


def _coingecko_rate(settings: Settings) -> float:
    return settings.coingecko_calls_per_minute


def _coinpaprika_rate(settings: Settings) -> float:
    return settings.coinpaprika_calls_per_minute


def _secret(value: Any) -> str | None:
    return None if value is None else str(value.get_secret_value())


def build_coingecko(runtime: Runtime, options: Mapping[str, Any]) -> Source:
    from workers.sources.coingecko import CoinGeckoSource

    settings = runtime.settings
    return CoinGeckoSource(
        base_url=settings.coingecko_base_url,
        api_key=_secret(settings.coingecko_api_key),
        client=runtime.client,
        limiter=runtime.limiters["coingecko"],
        max_pages=settings.coingecko_max_pages,
    )


def build_coingecko_history(runtime: Runtime, options: Mapping[str, Any]) -> Source:
    from workers.sources.coingecko import CoinGeckoHistorySource

    coin_id = options.get("asset")
    if not coin_id:
        raise ValueError("coingecko-history needs the CoinGecko coin id: --asset bitcoin")
    days = int(options.get("days") or 30)
    if days < 1:
        raise ValueError(f"--days must be at least 1, got {days}")
    settings = runtime.settings
    return CoinGeckoHistorySource(
        str(coin_id),
        start=datetime.now(UTC) - timedelta(days=days),
        base_url=settings.coingecko_base_url,
        api_key=_secret(settings.coingecko_api_key),
        client=runtime.client,
        limiter=runtime.limiters["coingecko"],
        coin_symbol=options.get("symbol"),
        coin_name=options.get("name"),
    )


def build_coinpaprika(runtime: Runtime, options: Mapping[str, Any]) -> Source:
    from workers.sources.coinpaprika import CoinPaprikaSource

    settings = runtime.settings
    return CoinPaprikaSource(
        base_url=settings.coinpaprika_base_url,
        api_key=_secret(settings.coinpaprika_api_key),
        client=runtime.client,
        limiter=runtime.limiters["coinpaprika"],
    )


def build_csv(runtime: Runtime, options: Mapping[str, Any]) -> Source:
    from workers.sources.csv import CsvSource

    settings = runtime.settings
    path = options.get("file")
    paths = [path] if path else settings.csv_paths
    # A BadDatasetName (a ValueError) says what a dataset name must look like.
    return CsvSource(
        paths,
        batch_size=settings.csv_batch_size,
        dataset=options.get("dataset"),
        coin=_file_coin(options, path),
    )


def _file_coin(options: Mapping[str, Any], path: str | None) -> FileCoin | None:
    """The coin `--asset SLUG` or `--symbol SYM [--name NAME]` names for a CSV file."""
    from workers.sources.csv import FileCoin

    asset, symbol, name = (options.get(key) for key in ("asset", "symbol", "name"))
    if options.get("days"):
        raise ValueError("--days is for coingecko-history, not csv")
    if not (asset or symbol or name):
        return None
    if not path:
        raise ValueError("--asset/--symbol/--name name the coin of one file: give --file PATH")
    return FileCoin(asset=asset, symbol=symbol, name=name)  # ValueError when both are given


COINGECKO = SourcePlugin(
    name="coingecko",
    description="Current prices of the top coins by market cap (CoinGecko /coins/markets).",
    build=build_coingecko,
    settings=(
        "COINGECKO_BASE_URL",
        "COINGECKO_API_KEY",
        "KASPARRO_COINGECKO_CALLS_PER_MINUTE",
        "KASPARRO_COINGECKO_MAX_PAGES",
    ),
    checkpoint="one stream: {page, watermark (newest last_updated seen), cycle_started_at, "
    "complete}; an unfinished cycle resumes at the next page",
    expected_fields=MARKET_FIELDS,
    rate_limit=RateLimit(_coingecko_rate),
)

COINGECKO_HISTORY = SourcePlugin(
    name="coingecko-history",
    description="A coin's past prices (CoinGecko /coins/{id}/market_chart), stored as coingecko.",
    build=build_coingecko_history,
    settings=("COINGECKO_BASE_URL", "COINGECKO_API_KEY", "KASPARRO_COINGECKO_CALLS_PER_MINUTE"),
    checkpoint="one stream per coin (history:<coin id>): {until: the end of the last window}",
    rate_limit=RateLimit(_coingecko_rate, bucket="coingecko"),
    stored_as="coingecko",
)

COINPAPRIKA = SourcePlugin(
    name="coinpaprika",
    description="Current USD prices of every coin CoinPaprika lists (/tickers).",
    build=build_coinpaprika,
    settings=(
        "COINPAPRIKA_BASE_URL",
        "COINPAPRIKA_API_KEY",
        "KASPARRO_COINPAPRIKA_CALLS_PER_MINUTE",
    ),
    checkpoint="one stream: {watermark: the newest last_updated seen}",
    expected_fields=TICKER_FIELDS,
    rate_limit=RateLimit(_coinpaprika_rate),
)

CSV = SourcePlugin(
    name="csv",
    description="Price rows of CSV files, stored per dataset as csv:<dataset>.",
    build=build_csv,
    settings=("KASPARRO_CSV_PATHS", "KASPARRO_CSV_BATCH_SIZE"),
    checkpoint="one stream per dataset and file (the file's identity): the rows read so far",
)


def _exchange(exchange: str) -> Build:
    def build(runtime: Runtime, options: Mapping[str, Any]) -> Source:
        from workers.sources.exchanges.source import build_exchange

        return build_exchange(exchange, runtime, options)

    return build


def _exchange_stream(exchange: str) -> StreamHook:
    from workers.sources.exchanges.source import exchange_stream

    return exchange_stream(exchange)


def _exchange_plugin(exchange: str, title: str, channel: str) -> SourcePlugin:
    upper = exchange.upper()
    return SourcePlugin(
        name=exchange,
        description=f"{title} spot trades, streamed ({channel}); REST fills gaps and catches up.",
        build=_exchange(exchange),
        settings=(f"{upper}_BASE_URL", f"{upper}_WS_URL", f"KASPARRO_{upper}_PAIRS"),
        checkpoint="one stream (`stream`): {after: {pair: the last trade id stored}}; a restart "
        "resumes after it, REST filling the trades in between",
        stream=_exchange_stream(exchange),
    )


BINANCE = _exchange_plugin("binance", "Binance", "<symbol>@trade")
COINBASE = _exchange_plugin("coinbase", "Coinbase Exchange", "matches")
KRAKEN = _exchange_plugin("kraken", "Kraken", "WebSocket v2 trade")
