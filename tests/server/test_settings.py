"""Settings: every variable of the contract, defaults, and one-line errors for bad values."""

from __future__ import annotations

import pytest

from server.settings import DEFAULT_DATABASE_URL, Settings, SettingsError


def load(**env: str) -> Settings:
    return Settings.load(_env_file=None, **env)


def test_defaults_are_the_embedded_mode() -> None:
    settings = load()
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.redis_url is None
    assert settings.embedded
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.sources == ["coingecko", "coinpaprika", "csv"]
    assert settings.csv_paths == ["./data/*.csv"]
    assert settings.api_keys == []


def test_no_secret_has_a_default() -> None:
    settings = load()
    assert settings.coingecko_api_key is None
    assert settings.coinpaprika_api_key is None
    assert settings.api_keys == []


def test_variables_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "DATABASE_URL": "postgresql+asyncpg://app@db.internal:5432/prices",
        "REDIS_URL": "rediss://cache.internal:6380/2",
        "KASPARRO_HOST": "0.0.0.0",
        "KASPARRO_PORT": "9000",
        "KASPARRO_SOURCES": " CoinGecko , csv ",
        "COINGECKO_BASE_URL": "http://127.0.0.1:1234/api/v3/",
        "COINGECKO_API_KEY": "cg-key",
        "COINPAPRIKA_BASE_URL": "http://127.0.0.1:1235/v1",
        "COINPAPRIKA_API_KEY": "cp-key",
        "KASPARRO_CSV_PATHS": "data/*.csv,/srv/prices/**/*.csv",
        "KASPARRO_API_KEYS": "key-one, key-two",
        "KASPARRO_INGEST_INTERVAL": "60",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings.load(_env_file=None)
    assert settings.database_url == env["DATABASE_URL"]
    assert settings.redis_url == env["REDIS_URL"]
    assert not settings.embedded
    assert (settings.host, settings.port) == ("0.0.0.0", 9000)
    assert settings.sources == ["coingecko", "csv"]
    assert settings.coingecko_base_url == "http://127.0.0.1:1234/api/v3"
    assert settings.coingecko_api_key is not None
    assert settings.coingecko_api_key.get_secret_value() == "cg-key"
    assert settings.csv_paths == ["data/*.csv", "/srv/prices/**/*.csv"]
    assert [key.get_secret_value() for key in settings.api_keys] == ["key-one", "key-two"]
    assert settings.ingest_interval == 60


def test_the_endpoint_defaults_fit_a_frontend_behind_one_address() -> None:
    settings = load()
    # 100 requests a second per client after a burst of ten seconds' worth.
    assert (settings.rate_limit_per_minute, settings.rate_limit_capacity) == (6000, 1000)
    assert load(KASPARRO_RATE_LIMIT_PER_MINUTE="60").rate_limit_capacity == 10
    assert load(KASPARRO_RATE_LIMIT_BURST="5").rate_limit_capacity == 5
    assert settings.http_cache_max_age == 1
    assert load(KASPARRO_HTTP_CACHE_MAX_AGE="0").http_cache_max_age == 0


def test_secrets_do_not_show_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COINGECKO_API_KEY", "very-secret-key")
    monkeypatch.setenv("KASPARRO_API_KEYS", "another-secret")
    settings = Settings.load(_env_file=None)
    assert "very-secret-key" not in repr(settings)
    assert "another-secret" not in repr(settings)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("sqlite:///./x.db", "sqlite+aiosqlite:///./x.db"),
    ],
)
def test_driverless_database_urls_get_the_async_driver(url: str, expected: str) -> None:
    assert load(DATABASE_URL=url).database_url == expected


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"DATABASE_URL": "mysql://u@h/db"}, ("DATABASE_URL", "mysql")),
        ({"DATABASE_URL": "not a url"}, ("DATABASE_URL", "not a url")),
        ({"REDIS_URL": "http://cache:6379"}, ("REDIS_URL", "http://cache:6379")),
        ({"KASPARRO_PORT": "70000"}, ("KASPARRO_PORT", "70000")),
        ({"KASPARRO_PORT": "0"}, ("KASPARRO_PORT", "0")),
        ({"KASPARRO_PORT": "eighty"}, ("KASPARRO_PORT", "eighty")),
        ({"KASPARRO_SOURCES": "coingecko,bitstamp"}, ("KASPARRO_SOURCES", "bitstamp")),
        ({"KASPARRO_INGEST_INTERVAL": "0"}, ("KASPARRO_INGEST_INTERVAL", "0")),
        ({"COINGECKO_BASE_URL": "ftp://x"}, ("COINGECKO_BASE_URL", "ftp://x")),
    ],
)
def test_a_bad_value_is_one_line_naming_variable_and_value(
    env: dict[str, str], names: tuple[str, str]
) -> None:
    with pytest.raises(SettingsError) as caught:
        load(**env)
    message = str(caught.value)
    assert "\n" not in message
    for name in names:
        assert name in message


def test_a_password_in_a_bad_database_url_is_masked() -> None:
    with pytest.raises(SettingsError) as caught:
        load(DATABASE_URL="mysql://user:hunter2@db/prices")
    assert "hunter2" not in str(caught.value)
    assert "DATABASE_URL" in str(caught.value)
