"""etlRunEvents: each run as it is queued, started or finished, optionally for one source.

A stream of the live hub's "runs" topic (the etl_runs rows workers publish after each change).
Run events are live only: the etlRuns query is their history.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncEngine
from strawberry.types import Info

from schema.context import Context
from schema.live.streams import Item, Stream
from schema.live.values import values
from schema.prices.query import validate_sources
from schema.runs.types import EtlRun
from server.broker.channels import RUNS_CHANNEL
from server.errors import ServiceUnavailable, UserError, graphql_error


class RunStream(Stream):
    topic = RUNS_CHANNEL
    resume_after = None

    def __init__(self, source: str | None) -> None:
        self.source = source

    @classmethod
    def of(cls, arguments: Mapping[str, Any]) -> RunStream:
        source = arguments.get("source")
        if source is None:
            return cls(None)
        (name,) = validate_sources([source]) or [source]
        return cls(name)

    @property
    def key(self) -> str | None:
        return self.source

    def select(self, event: Any) -> list[Item]:
        if not isinstance(event, dict) or "id" not in event or "source" not in event:
            return []
        if self.source is not None and event["source"] != self.source:
            return []
        try:
            return [Item(EtlRun.from_row(event))]
        except (AssertionError, KeyError, TypeError, ValueError):
            return []

    def trim(self, item: Item, after: int) -> Item | None:
        return item

    async def replay(self, engine: AsyncEngine, after: int) -> AsyncIterator[Item]:
        return
        yield  # an async generator that yields nothing


@strawberry.type
class RunsSubscription:
    @strawberry.subscription(description="Each run as it is queued, started or finished.")
    async def etl_run_events(
        self, info: Info[Context, None], source: str | None = None
    ) -> AsyncGenerator[EtlRun, None]:
        try:
            stream = RunStream.of({"source": source})
            hub = info.context.live
            if hub is None:
                raise ServiceUnavailable("live subscriptions are not running in this process")
            info.context.read_primary()  # runs fresher than a lagging replica
        except UserError as exc:
            raise graphql_error(exc) from None
        async for run in values(hub, stream):
            yield run
