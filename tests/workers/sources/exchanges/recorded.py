"""The exchange fixtures (tests/fixtures/exchanges/, provenance in SOURCES.md there)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "exchanges"


def frame(exchange: str, name: str) -> str:
    """A fixture as the text of one WebSocket frame or REST body."""
    return (FIXTURES / exchange / name).read_text()


def body(exchange: str, name: str) -> Any:
    """A REST fixture decoded as an HTTP client would (floats as floats)."""
    return json.loads(frame(exchange, name))
