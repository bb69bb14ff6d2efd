"""The source registry: a name → a configured Source. Adding a source adds one entry here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workers.runtime import Runtime
    from workers.sources.base import Source
    from workers.sources.csv import FileCoin

SOURCE_NAMES = ("coingecko", "coinpaprika", "csv", "coingecko-history")


class UnknownSourceError(ValueError):
    """The name is not one of SOURCE_NAMES."""


def build_source(
    runtime: Runtime, name: str, *, path: str | None = None, options: dict[str, Any] | None = None
) -> Source:
    """A Source for `name`, configured from the runtime's settings."""
    settings = runtime.settings
    options = options or {}
    if options.get("dataset") is not None and name != "csv":
        raise ValueError(f"--dataset names a CSV file's dataset; {name!r} has none")
    coin_options = [key for key in ("asset", "symbol", "name", "days") if options.get(key)]
    if coin_options and name not in ("csv", "coingecko-history"):
        given = ", ".join(f"--{key}" for key in coin_options)
        raise ValueError(f"{given}: only for csv and coingecko-history, not {name!r}")
    if name == "coingecko":
        from workers.sources.coingecko import CoinGeckoSource

        return CoinGeckoSource(
            base_url=settings.coingecko_base_url,
            api_key=_secret(settings.coingecko_api_key),
            client=runtime.client,
            limiter=runtime.limiters["coingecko"],
            max_pages=settings.coingecko_max_pages,
        )
    if name == "coingecko-history":
        return _coingecko_history(runtime, options)
    if name == "coinpaprika":
        from workers.sources.coinpaprika import CoinPaprikaSource

        return CoinPaprikaSource(
            base_url=settings.coinpaprika_base_url,
            api_key=_secret(settings.coinpaprika_api_key),
            client=runtime.client,
            limiter=runtime.limiters["coinpaprika"],
        )
    if name == "csv":
        from workers.sources.csv import CsvSource

        paths = [path] if path else settings.csv_paths
        # A BadDatasetName (a ValueError) says what a dataset name must look like.
        return CsvSource(
            paths,
            batch_size=settings.csv_batch_size,
            dataset=options.get("dataset"),
            coin=_file_coin(options, path),
        )
    raise UnknownSourceError(f"unknown source {name!r}; known: {', '.join(SOURCE_NAMES)}")


def _file_coin(options: dict[str, Any], path: str | None) -> FileCoin | None:
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


def _coingecko_history(runtime: Runtime, options: dict[str, Any]) -> Source:
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


def _secret(value: Any) -> str | None:
    return None if value is None else str(value.get_secret_value())
