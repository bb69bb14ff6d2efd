"""Structured logging: JSON lines in production, readable console output in a terminal.

Every line carries `request_id` (set by the request middleware) and, during an ingestion run,
`run_id` and `source` (bound by the runner). Configured secrets are masked in the rendered line,
whatever logged them: API keys, the SMTP password, passwords inside DATABASE_URL and REDIS_URL.
"""

from __future__ import annotations

import json as jsonlib
import logging
import re
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import quote, quote_plus

import structlog

from server.requestid import current_request_id

if TYPE_CHECKING:
    from server.settings import Settings

MASK = "***"
# Shorter values would mask ordinary words; no real key or password is this short.
MIN_SECRET_LENGTH = 4


def _add_request_id(
    _logger: object, _method: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    request_id = current_request_id()
    if request_id and "request_id" not in event:
        event["request_id"] = request_id
    return event


def configure_logging(
    level: str = "info", *, json: bool | None = None, secrets: Iterable[str] = ()
) -> None:
    """Route stdlib and structlog records through one renderer (JSON unless on a TTY), with
    every value in `secrets` masked in the output."""
    if json is None:
        json = not sys.stderr.isatty()
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        _add_request_id,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor = Redacting(
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(),
        secrets,
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info if json else _identity,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's own handlers would print a second, unstructured copy of each line.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "arq"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def _identity(
    _logger: object, _method: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    return event


def configure_from_settings(settings: Settings) -> None:
    """`configure_logging` with the level, format and secrets of `settings`."""
    json = {"auto": None, "json": True, "console": False}[settings.log_format]
    configure_logging(settings.log_level, json=json, secrets=secret_values(settings))


def secret_values(settings: Settings) -> list[str]:
    """Every configured secret: keys, passwords, the webhook URL, URL passwords."""
    from sqlalchemy.engine import make_url

    found = [key.get_secret_value() for key in settings.api_keys]
    for secret in (
        settings.coingecko_api_key,
        settings.coinpaprika_api_key,
        settings.smtp_password,
        settings.alert_webhook_url,
    ):
        if secret is not None:
            found.append(secret.get_secret_value())
    found.append(make_url(settings.database_url).password or "")
    if settings.redis_url:
        found.append(_url_password(settings.redis_url))
    return [value for value in found if value]


def _url_password(url: str) -> str:
    from urllib.parse import unquote, urlsplit

    password = urlsplit(url).password
    return unquote(password) if password else ""


class Redacting:
    """Wraps a renderer: every form of each secret (as is, JSON-escaped, repr-escaped and
    URL-encoded) is replaced by *** in the rendered line."""

    def __init__(self, renderer: structlog.typing.Processor, secrets: Iterable[str]) -> None:
        self.renderer = renderer
        forms = {
            form
            for secret in secrets
            if len(secret) >= MIN_SECRET_LENGTH
            for form in _forms(secret)
        }
        # Longest first, so a secret containing another is masked whole.
        ordered = sorted(forms, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, logger: object, method: str, event: structlog.typing.EventDict) -> str:
        rendered = self.renderer(logger, method, event)
        text = rendered.decode() if isinstance(rendered, bytes | bytearray) else str(rendered)
        return text if self._pattern is None else self._pattern.sub(MASK, text)


def _forms(secret: str) -> set[str]:
    return {
        secret,
        jsonlib.dumps(secret)[1:-1],
        repr(secret)[1:-1],
        quote(secret, safe=""),
        quote_plus(secret),
    } - {""}
