"""Schema extensions shared by every operation."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from strawberry.extensions import SchemaExtension

from server.requestid import current_request_id


class ResponseMeta(SchemaExtension):
    """Adds `extensions.requestId` and `extensions.latencyMs` to every response."""

    _started: float = 0.0

    def on_operation(self) -> Iterator[None]:
        self._started = time.perf_counter()
        yield

    def get_results(self) -> dict[str, Any]:
        latency = (time.perf_counter() - self._started) * 1000 if self._started else 0.0
        return {"requestId": current_request_id(), "latencyMs": round(latency, 3)}
