"""etlRunEvents: each run event published on the "runs" channel, optionally for one source."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

import strawberry
from strawberry.types import Info

from schema.context import Context
from schema.errors import UserError
from schema.prices.query import validate_sources
from schema.prices.subscription import client_error
from schema.runs.types import EtlRun
from server.broker import Message
from workers.pipeline.runs import RUNS_CHANNEL


def run_payload(data: bytes) -> dict[str, Any] | None:
    """The published etl_runs row, or None when the message is not one."""
    try:
        payload = json.loads(data)
    except ValueError:
        return None
    if not isinstance(payload, dict) or "id" not in payload or "source" not in payload:
        return None
    return payload


@strawberry.type
class RunsSubscription:
    @strawberry.subscription(description="Each run as it is queued, started or finished.")
    async def etl_run_events(
        self, info: Info[Context, None], source: str | None = None
    ) -> AsyncGenerator[EtlRun, None]:
        try:
            wanted = None if source is None else validate_sources([source])
        except UserError as exc:
            raise client_error(exc) from None
        async with info.context.broker.subscribe(RUNS_CHANNEL) as subscription:
            async for event in subscription:
                if not isinstance(event, Message):
                    continue  # a Gap: run events are not replayed
                payload = run_payload(event.data)
                if payload is None or (wanted is not None and payload["source"] not in wanted):
                    continue
                try:
                    run = EtlRun.from_row(payload)
                except (AssertionError, KeyError, TypeError, ValueError):
                    continue
                yield run
