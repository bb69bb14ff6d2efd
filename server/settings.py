"""All configuration of the service, read from the environment (and `.env`) into one object.

Settings are built once by the entry point (`Settings.load()`) and passed into the factories
(`create_app`, `create_engine`, the worker); nothing imports a global instance.
"""

from __future__ import annotations

from datetime import timedelta
from ipaddress import ip_network
from typing import Annotated, Any, Literal, Self

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from server.durations import parse_duration
from server.source_names import BUILTIN_SOURCES, known_sources

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./kasparro.db"
# The built-in sources, enabled by default; installed plugins add theirs (`known_sources`).
KNOWN_SOURCES = BUILTIN_SOURCES

# Driver-less URLs a managed service hands out are mapped onto the async drivers we ship.
_DRIVER_FOR_SCHEME = {
    "postgresql+asyncpg": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "sqlite": "sqlite+aiosqlite",
}
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


class SettingsError(ValueError):
    """A variable holds a value the service cannot start with; the message is one line."""


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CommaList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    """Every variable of the service. Field names are internal; the aliases are the contract."""

    model_config = SettingsConfigDict(
        env_file=".env",
        extra="ignore",
        populate_by_name=True,
        validate_default=True,
    )

    database_url: str = Field(DEFAULT_DATABASE_URL, validation_alias="DATABASE_URL")
    # A streaming replica of DATABASE_URL (PostgreSQL only) for plain query reads; writes, locks,
    # live subscriptions and anything that must see a just-committed row stay on DATABASE_URL.
    # Unset: reads go to DATABASE_URL.
    database_read_url: str | None = Field(None, validation_alias="DATABASE_READ_URL")
    redis_url: str | None = Field(None, validation_alias="REDIS_URL")
    host: str = Field("127.0.0.1", validation_alias="KASPARRO_HOST")
    port: int = Field(8000, validation_alias="KASPARRO_PORT")
    sources: CommaList = Field(list(KNOWN_SOURCES), validation_alias="KASPARRO_SOURCES")

    coingecko_base_url: str = Field(
        "https://api.coingecko.com/api/v3", validation_alias="COINGECKO_BASE_URL"
    )
    coingecko_api_key: SecretStr | None = Field(None, validation_alias="COINGECKO_API_KEY")
    coinpaprika_base_url: str = Field(
        "https://api.coinpaprika.com/v1", validation_alias="COINPAPRIKA_BASE_URL"
    )
    coinpaprika_api_key: SecretStr | None = Field(None, validation_alias="COINPAPRIKA_API_KEY")
    csv_paths: CommaList = Field(["./data/*.csv"], validation_alias="KASPARRO_CSV_PATHS")
    # Exchange sources (workers/sources/exchanges/): REST root, WebSocket root and the pairs
    # followed, comma-separated in the exchange's own spelling.
    binance_base_url: str = Field("https://api.binance.com", validation_alias="BINANCE_BASE_URL")
    binance_ws_url: str = Field("wss://stream.binance.com:9443", validation_alias="BINANCE_WS_URL")
    binance_pairs: CommaList = Field(
        ["BTCUSDT", "ETHUSDT"], validation_alias="KASPARRO_BINANCE_PAIRS"
    )
    coinbase_base_url: str = Field(
        "https://api.exchange.coinbase.com", validation_alias="COINBASE_BASE_URL"
    )
    coinbase_ws_url: str = Field(
        "wss://ws-feed.exchange.coinbase.com", validation_alias="COINBASE_WS_URL"
    )
    coinbase_pairs: CommaList = Field(
        ["BTC-USD", "ETH-USD"], validation_alias="KASPARRO_COINBASE_PAIRS"
    )
    kraken_base_url: str = Field("https://api.kraken.com", validation_alias="KRAKEN_BASE_URL")
    kraken_ws_url: str = Field("wss://ws.kraken.com/v2", validation_alias="KRAKEN_WS_URL")
    kraken_pairs: CommaList = Field(
        ["BTC/USD", "ETH/USD"], validation_alias="KASPARRO_KRAKEN_PAIRS"
    )
    # Streams (workers/streams/): a micro-batch commits KASPARRO_STREAM_FLUSH_MS milliseconds
    # after its first trade arrived, or at KASPARRO_STREAM_BATCH messages, whichever comes
    # first (50 ms: a trade reaches subscribers in well under a second, at twenty commits a
    # second per exchange at most); observations are stored one per pair and
    # KASPARRO_STREAM_RESOLUTION seconds (the bucket's last trade).
    stream_flush_ms: int = Field(50, ge=1, validation_alias="KASPARRO_STREAM_FLUSH_MS")
    stream_batch: int = Field(500, ge=1, validation_alias="KASPARRO_STREAM_BATCH")
    stream_resolution: float = Field(
        1.0, ge=0.001, le=86_400, validation_alias="KASPARRO_STREAM_RESOLUTION"
    )

    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, validation_alias="KASPARRO_API_KEYS"
    )
    ingest_interval: int = Field(300, validation_alias="KASPARRO_INGEST_INTERVAL")
    # Seconds a running run's lease lasts: its process renews it (every third of it); any
    # process closes a run whose lease expired as `abandoned`.
    run_lease: float = Field(60, gt=0, validation_alias="KASPARRO_RUN_LEASE")
    # Without a cross-process broker (no REDIS_URL), seconds between two looks at the newest
    # price id, so commits made by another process reach subscriptions and the price cache.
    live_poll_interval: float = Field(0.5, gt=0, validation_alias="KASPARRO_LIVE_POLL_INTERVAL")

    coingecko_calls_per_minute: float = Field(
        10, gt=0, validation_alias="KASPARRO_COINGECKO_CALLS_PER_MINUTE"
    )
    coingecko_max_pages: int = Field(4, ge=1, validation_alias="KASPARRO_COINGECKO_MAX_PAGES")
    coinpaprika_calls_per_minute: float = Field(
        60, gt=0, validation_alias="KASPARRO_COINPAPRIKA_CALLS_PER_MINUTE"
    )
    http_timeout: float = Field(15, gt=0, validation_alias="KASPARRO_HTTP_TIMEOUT")
    http_max_attempts: int = Field(5, ge=1, validation_alias="KASPARRO_HTTP_MAX_ATTEMPTS")
    http_backoff: float = Field(0.5, ge=0, validation_alias="KASPARRO_HTTP_BACKOFF")
    # Longest wait, in seconds, between two attempts to reach Redis again (exponential backoff
    # with jitter), in `kasparro worker` and the worker of `kasparro up`.
    redis_retry_max: float = Field(30, gt=0, validation_alias="KASPARRO_REDIS_RETRY_MAX")
    csv_batch_size: int = Field(5000, ge=1, validation_alias="KASPARRO_CSV_BATCH_SIZE")
    # Failure injection for demonstrations and crash tests: fail a run after N loaded rows.
    fail_after_rows: int | None = Field(None, ge=0, validation_alias="KASPARRO_FAIL_AFTER_ROWS")

    log_level: str = Field("info", validation_alias="KASPARRO_LOG_LEVEL")
    graphiql: bool = Field(True, validation_alias="KASPARRO_GRAPHIQL")
    # The live dashboard at /dashboard (server/web/).
    dashboard: bool = Field(True, validation_alias="KASPARRO_DASHBOARD")
    max_page_size: int = Field(500, ge=1, validation_alias="KASPARRO_MAX_PAGE_SIZE")
    db_pool_size: int = Field(10, validation_alias="KASPARRO_DB_POOL_SIZE")
    # Seconds to wait for a new database connection: a request during an outage fails this fast.
    db_connect_timeout: float = Field(5, gt=0, validation_alias="KASPARRO_DB_CONNECT_TIMEOUT")

    # ---- protection of the GraphQL endpoint ----
    max_query_depth: int = Field(10, ge=1, validation_alias="KASPARRO_MAX_QUERY_DEPTH")
    max_aliases: int = Field(15, ge=0, validation_alias="KASPARRO_MAX_ALIASES")
    max_tokens: int = Field(2000, ge=1, validation_alias="KASPARRO_MAX_TOKENS")
    max_query_bytes: int = Field(10_000, ge=1, validation_alias="KASPARRO_MAX_QUERY_BYTES")
    # Fields and fragments a document selects, each fragment counted at every place it is spread
    # (Apollo Server's maxRecursiveSelections): bounds the work of validating and collecting
    # fields whatever fragments multiply. A 10 KB document without fragments selects ~1,000.
    max_selections: int = Field(5000, ge=1, validation_alias="KASPARRO_MAX_SELECTIONS")
    # Rows an operation may ask for, estimated before it runs (schema/cost.py): page sizes
    # multiplied through nested lists. 5,000 holds the largest page (500) of prices or assets
    # with a nested list each; the default page of the same costs a tenth of it.
    max_query_cost: int = Field(5000, ge=1, validation_alias="KASPARRO_MAX_QUERY_COST")
    introspection: bool = Field(True, validation_alias="KASPARRO_INTROSPECTION")
    # Requests per minute per client (API key, else address); 0 switches the limit off. Abuse
    # protection, not metering: one address is often a whole office, a NAT or a server-side
    # rendering frontend, so the default (100 a second) fits a frontend's traffic.
    rate_limit_per_minute: int = Field(
        6000, ge=0, validation_alias="KASPARRO_RATE_LIMIT_PER_MINUTE"
    )
    # Requests a client may send at once; default: ten seconds' worth (1,000 by default).
    rate_limit_burst: int | None = Field(None, ge=1, validation_alias="KASPARRO_RATE_LIMIT_BURST")
    # Addresses or networks (comma list: IPs, CIDRs) of the reverse proxies in front of the
    # server. Only a request whose peer is one of them is read for X-Forwarded-For (or
    # Forwarded); its client is then the right-most address there that is not itself a
    # trusted proxy. Empty: no header is believed, the peer is the client.
    trusted_proxies: CommaList = Field(
        default_factory=list, validation_alias="KASPARRO_TRUSTED_PROXIES"
    )
    # Seconds a shared cache (CDN, proxy, browser) may reuse a successful GET /graphql response
    # (Cache-Control max-age); prices change at every ingestion, so it stays short. 0: every use
    # is revalidated (the ETag still spares the body).
    http_cache_max_age: int = Field(1, ge=0, validation_alias="KASPARRO_HTTP_CACHE_MAX_AGE")

    # Every GraphQL read needs an API key too (HTTP: Bearer or X-API-Key; WebSocket: in the
    # connection_init payload or the upgrade request's headers).
    require_read_key: bool = Field(False, validation_alias="KASPARRO_REQUIRE_READ_KEY")

    # ---- live subscriptions (GraphQL over WebSocket) ----
    # Open subscription connections per process: WebSockets and streamed HTTP subscriptions
    # (graphql-sse, multipart) together; more are refused (WebSocket 1013, HTTP 503).
    ws_max_connections: int = Field(10_000, ge=1, validation_alias="KASPARRO_WS_MAX_CONNECTIONS")
    ws_max_subscriptions: int = Field(100, ge=1, validation_alias="KASPARRO_WS_MAX_SUBSCRIPTIONS")
    # Seconds a client has to send connection_init after connecting.
    ws_init_timeout: float = Field(10, gt=0, validation_alias="KASPARRO_WS_INIT_TIMEOUT")
    # Seconds between protocol keep-alive messages (ping, or "ka" for graphql-ws); 0: none.
    ws_keepalive: float = Field(15, ge=0, validation_alias="KASPARRO_WS_KEEPALIVE")
    # Bytes of messages a client may have waiting; a client further behind is closed (1013).
    ws_max_queue_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, validation_alias="KASPARRO_WS_MAX_QUEUE_BYTES"
    )
    # Largest message a WebSocket client may send, in bytes; a larger one closes the connection
    # with 1009. A subscribe message is a request like an HTTP body (a document of at most
    # KASPARRO_MAX_QUERY_BYTES, its variables) plus the message's own fields: 16 KiB leaves
    # room for them. Raise it with KASPARRO_MAX_QUERY_BYTES.
    ws_max_message_bytes: int = Field(
        16 * 1024, ge=1024, validation_alias="KASPARRO_WS_MAX_MESSAGE_BYTES"
    )

    # ---- observability: logs, worker metrics, alerts ----
    # auto: JSON unless stderr is a terminal; console: readable lines for development.
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", validation_alias="KASPARRO_LOG_FORMAT"
    )
    # Port of the worker's own /metrics (`kasparro worker`); 0 switches it off.
    worker_metrics_port: int = Field(
        9100, ge=0, le=65535, validation_alias="KASPARRO_WORKER_METRICS_PORT"
    )
    worker_metrics_host: str = Field(
        "0.0.0.0",  # noqa: S104 - scraped from other containers
        validation_alias="KASPARRO_WORKER_METRICS_HOST",
    )
    # GET /debug/memory (server.debug_memory): live object counts by type and tracemalloc
    # differences, for operators (a valid API key) only. Off by default: the route does not exist.
    debug_memory: bool = Field(False, validation_alias="KASPARRO_DEBUG_MEMORY")
    # A webhook URL often embeds its token (Slack, Teams): kept secret like a password.
    alert_webhook_url: SecretStr | None = Field(None, validation_alias="KASPARRO_ALERT_WEBHOOK_URL")
    smtp_host: str | None = Field(None, validation_alias="KASPARRO_SMTP_HOST")
    smtp_port: int = Field(587, ge=1, le=65535, validation_alias="KASPARRO_SMTP_PORT")
    smtp_security: Literal["starttls", "ssl", "none"] = Field(
        "starttls", validation_alias="KASPARRO_SMTP_SECURITY"
    )
    smtp_user: str | None = Field(None, validation_alias="KASPARRO_SMTP_USER")
    smtp_password: SecretStr | None = Field(None, validation_alias="KASPARRO_SMTP_PASSWORD")
    smtp_from: str | None = Field(None, validation_alias="KASPARRO_SMTP_FROM")
    alert_email_to: CommaList = Field(
        default_factory=list, validation_alias="KASPARRO_ALERT_EMAIL_TO"
    )
    # De-duplication window: one alert per condition (and channel) per this many seconds.
    alert_window: int = Field(3600, ge=1, validation_alias="KASPARRO_ALERT_WINDOW")
    alert_max_attempts: int = Field(3, ge=1, validation_alias="KASPARRO_ALERT_MAX_ATTEMPTS")
    alert_backoff: float = Field(1.0, ge=0, validation_alias="KASPARRO_ALERT_BACKOFF")
    alert_timeout: float = Field(10, gt=0, validation_alias="KASPARRO_ALERT_TIMEOUT")

    # ---- data quality: schema drift and anomalies ----
    # A renamed field matched with at least this confidence (0-1) is read under its old name...
    drift_automap_at: float = Field(0.8, gt=0, le=1, validation_alias="KASPARRO_DRIFT_AUTOMAP_AT")
    # ...from this one up to that, the rows are quarantined for review; below, it is ignored.
    drift_quarantine_at: float = Field(
        0.5, ge=0, le=1, validation_alias="KASPARRO_DRIFT_QUARANTINE_AT"
    )
    # Earlier runs of a source needed before a run's numbers are judged against them.
    anomaly_min_history: int = Field(5, ge=1, validation_alias="KASPARRO_ANOMALY_MIN_HISTORY")
    # Robust z-score (distance from the median in scaled MADs) from which a run is an anomaly.
    anomaly_mad_threshold: float = Field(
        3.5, gt=0, validation_alias="KASPARRO_ANOMALY_MAD_THRESHOLD"
    )
    # A price this many times its previous observation (or 1/this of it) is an anomaly.
    anomaly_price_jump: float = Field(2.0, gt=1, validation_alias="KASPARRO_ANOMALY_PRICE_JUMP")
    # A price this many times the other sources' median (or 1/this of it) is an anomaly.
    anomaly_divergence: float = Field(3.0, gt=1, validation_alias="KASPARRO_ANOMALY_DIVERGENCE")
    # Seconds either side of a price within which other sources' observations are compared.
    anomaly_window: float = Field(3600, gt=0, validation_alias="KASPARRO_ANOMALY_WINDOW")
    # Asset.spread compares the sources' newest prices observed within this many seconds of
    # the newest of them; an older one is stale, left out.
    spread_window: int = Field(3600, ge=1, validation_alias="KASPARRO_SPREAD_WINDOW")
    # Time partitions of prices and raw_records (PostgreSQL): their width, how many are made
    # ahead of now, and who makes them (`auto`: pg_partman when the extension is created in the
    # database, else the worker; `pg_partman`: create the extension and use it; `worker`).
    partition_interval: Literal["day", "week", "month"] = Field(
        "month", validation_alias="KASPARRO_PARTITION_INTERVAL"
    )
    partitions_ahead: int = Field(3, ge=1, le=366, validation_alias="KASPARRO_PARTITIONS_AHEAD")
    partition_manager: Literal["auto", "pg_partman", "worker"] = Field(
        "auto", validation_alias="KASPARRO_PARTITION_MANAGER"
    )
    # Retention: how long second-level prices and raw records are kept (`7d`, `12h`, `4w`).
    # Unset: for ever. Candle roll-ups are never removed by retention.
    retention_prices: timedelta | None = Field(None, validation_alias="KASPARRO_RETENTION_PRICES")
    retention_raw_records: timedelta | None = Field(
        None, validation_alias="KASPARRO_RETENTION_RAW_RECORDS"
    )

    # ---- validation: each error names the variable and the value ----

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError(f"DATABASE_URL={value!r} is not a database URL") from None
        driver = _DRIVER_FOR_SCHEME.get(url.drivername)
        if driver is None:
            shown = url.render_as_string(hide_password=True)
            raise ValueError(
                f"DATABASE_URL={shown!r} has unsupported scheme {url.drivername!r}; "
                "use postgresql+asyncpg:// or sqlite+aiosqlite://"
            )
        return url.set(drivername=driver).render_as_string(hide_password=False)

    @field_validator("database_read_url")
    @classmethod
    def _database_read_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError("DATABASE_READ_URL=*** is not a database URL") from None
        if _DRIVER_FOR_SCHEME.get(url.drivername) != "postgresql+asyncpg":
            shown = url.render_as_string(hide_password=True)
            raise ValueError(
                f"DATABASE_READ_URL={shown!r} has unsupported scheme {url.drivername!r}; "
                "a read replica is a PostgreSQL server: use postgresql+asyncpg://"
            )
        return url.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)

    @model_validator(mode="after")
    def _read_url_needs_postgres(self) -> Self:
        if self.database_read_url is not None and self.is_sqlite:
            raise ValueError(
                "DATABASE_READ_URL=*** needs DATABASE_URL on PostgreSQL (a replica of it); "
                "SQLite has no read replicas"
            )
        return self

    @field_validator("coingecko_api_key", "coinpaprika_api_key", mode="before")
    @classmethod
    def _empty_key_is_unset(cls, value: object) -> object:
        # `COINGECKO_API_KEY=` in a .env file means "no key", not an empty key.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        if not value.startswith(_REDIS_SCHEMES):
            raise ValueError(
                f"REDIS_URL={_mask_url(value)!r} must start with redis://, rediss:// or unix://"
            )
        return value

    @field_validator("port")
    @classmethod
    def _port(cls, value: int) -> int:
        if not 1 <= value <= 65535:
            raise ValueError(f"KASPARRO_PORT={value} is out of range 1-65535")
        return value

    @field_validator("sources", mode="before")
    @classmethod
    def _sources_list(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("sources")
    @classmethod
    def _sources_known(cls, value: list[str]) -> list[str]:
        names = [name.lower() for name in value]
        known = known_sources()
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ValueError(
                f"KASPARRO_SOURCES={','.join(value)!r} names unknown source(s) "
                f"{', '.join(unknown)}; known: {', '.join(known)}"
            )
        return list(dict.fromkeys(names))

    @field_validator("csv_paths", "api_keys", "alert_email_to", mode="before")
    @classmethod
    def _comma_lists(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _trusted_proxies(cls, value: object) -> object:
        value = _split_csv(value)
        if isinstance(value, list):
            for entry in value:
                try:
                    ip_network(str(entry), strict=False)
                except ValueError:
                    raise ValueError(
                        f"KASPARRO_TRUSTED_PROXIES={','.join(map(str, value))}: {entry!r} is "
                        "neither an IP address nor a network (CIDR)"
                    ) from None
        return value

    @field_validator(
        "coingecko_base_url",
        "coinpaprika_base_url",
        "binance_base_url",
        "coinbase_base_url",
        "kraken_base_url",
    )
    @classmethod
    def _base_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"base URL {value!r} must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("binance_ws_url", "coinbase_ws_url", "kraken_ws_url")
    @classmethod
    def _exchange_ws_url(cls, value: str) -> str:
        if not value.startswith(("ws://", "wss://")):
            raise ValueError(f"WebSocket URL {value!r} must start with ws:// or wss://")
        return value.rstrip("/")

    @field_validator("binance_pairs", "coinbase_pairs", "kraken_pairs", mode="before")
    @classmethod
    def _exchange_pairs(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("ingest_interval")
    @classmethod
    def _interval(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"KASPARRO_INGEST_INTERVAL={value} must be at least 1 second")
        return value

    @field_validator("db_pool_size")
    @classmethod
    def _pool(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"KASPARRO_DB_POOL_SIZE={value} must be at least 1")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.lower()
        if level not in {"debug", "info", "warning", "error", "critical"}:
            raise ValueError(f"KASPARRO_LOG_LEVEL={value!r} is not a log level")
        return level

    @field_validator(
        "alert_webhook_url", "smtp_host", "smtp_user", "smtp_password", "smtp_from", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("retention_prices", "retention_raw_records", mode="before")
    @classmethod
    def _retention(cls, value: object, info: ValidationInfo) -> object:
        if value is None or isinstance(value, timedelta):
            return value
        text = str(value).strip()
        if not text:
            return None
        name = "KASPARRO_" + str(info.field_name).upper()
        try:
            return parse_duration(text)
        except ValueError as exc:
            raise ValueError(f"{name}={text!r}: {exc}") from None

    @field_validator("alert_webhook_url")
    @classmethod
    def _webhook_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("http://", "https://")):
            raise ValueError("KASPARRO_ALERT_WEBHOOK_URL=*** must start with http:// or https://")
        return value

    @model_validator(mode="after")
    def _email_needs_a_server(self) -> Self:
        if self.alert_email_to and not (self.smtp_host and self.smtp_from):
            raise ValueError(
                f"KASPARRO_ALERT_EMAIL_TO={','.join(self.alert_email_to)} needs "
                "KASPARRO_SMTP_HOST and KASPARRO_SMTP_FROM"
            )
        if self.smtp_password is not None and not self.smtp_user:
            raise ValueError("KASPARRO_SMTP_PASSWORD=*** needs KASPARRO_SMTP_USER")
        return self

    @model_validator(mode="after")
    def _drift_thresholds(self) -> Self:
        if self.drift_quarantine_at > self.drift_automap_at:
            raise ValueError(
                f"KASPARRO_DRIFT_QUARANTINE_AT={self.drift_quarantine_at} must not be above "
                f"KASPARRO_DRIFT_AUTOMAP_AT={self.drift_automap_at}"
            )
        return self

    # ---- construction ----

    @classmethod
    def load(cls, **overrides: Any) -> Self:
        """Read the environment; raise SettingsError with a one-line message on a bad value."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise SettingsError(_one_line(exc)) from None

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def rate_limit_capacity(self) -> int:
        """The burst of the request rate limit (ten seconds' worth unless set)."""
        return self.rate_limit_burst or max(1, self.rate_limit_per_minute // 6)

    @property
    def embedded(self) -> bool:
        """True when no Redis is configured: in-memory broker and in-process scheduler."""
        return self.redis_url is None


def _mask_url(value: str) -> str:
    scheme, sep, rest = value.partition("://")
    if sep and "@" in rest:
        credentials, _, host = rest.rpartition("@")
        user = credentials.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in credentials else value
    return value


def _one_line(exc: ValidationError) -> str:
    """Turn pydantic's report into `VARIABLE: message` lines joined on one line."""
    parts = []
    for error in exc.errors():
        loc = error.get("loc") or ("settings",)
        name = str(loc[0])
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        if "=" in message and message.split("=", 1)[0].isupper():
            parts.append(message)
        else:
            value = error.get("input")
            shown = "***" if "KEY" in name or "PASSWORD" in name or "URL" in name else repr(value)
            parts.append(f"{name}={shown}: {message}")
    return "invalid configuration: " + "; ".join(parts)
