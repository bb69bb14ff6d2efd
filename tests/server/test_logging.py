"""Logs are structured JSON with request_id, run_id and source, and never show a secret."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from sqlalchemy.engine import make_url

from server.logging import configure_logging, secret_values
from server.settings import Settings
from tests.support.database import migrate
from tests.support.fake_upstream import FakeUpstream, Fault, Route

ROOT = Path(__file__).resolve().parents[2]
API_KEYS = ("apikey-one-1f2e3d", "apikey-two-9a8b7c")
COINGECKO_KEY = "CG-demo-key-5e6f7a8b"
SMTP_PASSWORD = "smtp-S3cret/pw+x"  # characters that URL- and JSON-encoding change
DB_PASSWORD = "db-Pa55word-4c5d"
REDIS_PASSWORD = "redis-Pa55word-6e7f"
SECRETS = (*API_KEYS, COINGECKO_KEY, SMTP_PASSWORD, DB_PASSWORD, REDIS_PASSWORD)


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream.shared()


def child_environment(database_url: str, fake: FakeUpstream) -> dict[str, str]:
    url = make_url(database_url).set(password=DB_PASSWORD)  # trust auth ignores it
    return {
        "PATH": os.environ.get("PATH", ""),
        "DATABASE_URL": url.render_as_string(hide_password=False),
        "REDIS_URL": f"redis://default:{REDIS_PASSWORD}@127.0.0.1:6379/0",
        "KASPARRO_API_KEYS": ",".join(API_KEYS),
        "COINGECKO_API_KEY": COINGECKO_KEY,
        "COINGECKO_BASE_URL": fake.coingecko_url,
        "KASPARRO_SOURCES": "coingecko",
        "KASPARRO_COINGECKO_CALLS_PER_MINUTE": "60000",
        "KASPARRO_HTTP_BACKOFF": "0.01",
        "KASPARRO_SMTP_HOST": "127.0.0.1",
        "KASPARRO_SMTP_PORT": "1",  # nothing listens: the alert fails, and says so in the logs
        "KASPARRO_SMTP_USER": "alerts",
        "KASPARRO_SMTP_PASSWORD": SMTP_PASSWORD,
        "KASPARRO_SMTP_FROM": "kasparro@example.test",
        "KASPARRO_ALERT_EMAIL_TO": "ops@example.test",
        "KASPARRO_ALERT_MAX_ATTEMPTS": "1",
        "KASPARRO_GRAPHIQL": "false",
        "KASPARRO_LOG_LEVEL": "debug",
        "KASPARRO_LOG_FORMAT": "json",
        "PYTHONPATH": str(ROOT),
    }


async def test_no_configured_secret_appears_in_the_logs_of_a_request_and_a_run(
    pg_url: str, fake: FakeUpstream
) -> None:
    await migrate(pg_url)
    # A retry and a failed run: warnings that quote URLs and upstream errors.
    fake.inject(Route.MARKETS, Fault.server_error(503), Fault.error(401, {"error": "bad key"}))
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.logging_child",
        cwd=ROOT,
        env=child_environment(pg_url, fake),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(child.communicate(), timeout=90)
    logs = err.decode()
    assert child.returncode == 0, logs[-3000:]
    assert out.decode().split()[1] == "failed"

    # The key was in use: it went upstream in its header.
    assert fake.requests_for(Route.MARKETS)[0].headers["x-cg-demo-api-key"] == COINGECKO_KEY
    for secret in SECRETS:
        assert secret not in logs, f"{secret} is in the logs"
    lines = [json.loads(line) for line in logs.splitlines() if line.strip()]
    assert any(line.get("request_id") for line in lines)
    run_lines = [line for line in lines if line.get("run_id") is not None]
    assert {line["source"] for line in run_lines} == {"coingecko"}
    assert any(line["event"] == "alert not delivered" for line in run_lines)
    careless = [line for line in lines if line.get("logger") == "tests.careless"]
    assert len(careless) == 5
    assert all("***" in json.dumps(line) for line in careless)


def test_secret_values_cover_keys_passwords_and_url_passwords() -> None:
    settings = Settings.load(
        _env_file=None,
        DATABASE_URL=f"postgresql://u:{DB_PASSWORD}@db/k",
        REDIS_URL=f"redis://:{REDIS_PASSWORD}@redis:6379/0",
        KASPARRO_API_KEYS=",".join(API_KEYS),
        COINGECKO_API_KEY=COINGECKO_KEY,
        KASPARRO_SMTP_USER="alerts",
        KASPARRO_SMTP_PASSWORD=SMTP_PASSWORD,
        KASPARRO_ALERT_WEBHOOK_URL="https://hooks.example.test/T0/B1/xyzSECRET",
    )
    assert set(secret_values(settings)) == {
        *SECRETS,
        "https://hooks.example.test/T0/B1/xyzSECRET",
    }


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


@pytest.mark.parametrize("json_format", [True, False])
def test_the_console_and_json_renderers_mask_secrets(
    json_format: bool, restore_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging("info", json=json_format, secrets=[SMTP_PASSWORD, "abc"])
    logger: Any = structlog.get_logger("tests.render")
    structlog.contextvars.bind_contextvars(run_id=7, source="csv")
    try:
        logger.warning("login", password=SMTP_PASSWORD, short="abc")
        logging.getLogger("tests.render").error("url %s", f"smtp://u:{SMTP_PASSWORD}@h")
    finally:
        structlog.contextvars.clear_contextvars()
    text = stream.getvalue()
    assert SMTP_PASSWORD not in text
    assert json.dumps(SMTP_PASSWORD)[1:-1] not in text
    assert "abc" in text  # too short to be a secret: never masked
    assert text.count("***") == 2
    if json_format:
        first = json.loads(text.splitlines()[0])
        assert first["run_id"] == 7
        assert first["source"] == "csv"
        assert first["password"] == "***"
    else:
        plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
        assert "run_id=7" in plain
        assert "source=csv" in plain
