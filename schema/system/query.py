"""Queries about the service itself."""

from __future__ import annotations

import asyncio

import strawberry
from strawberry.types import Info

from schema.context import Context
from schema.system.types import ComponentStatus, Health
from server import __version__
from server.db import ping


@strawberry.type
class SystemQuery:
    @strawberry.field(description="Database and broker reachability, probed on each call.")
    async def health(self, info: Info[Context, None]) -> Health:
        context = info.context
        database, broker = await asyncio.gather(ping(context.engine), context.broker.ping())
        return Health(
            database=ComponentStatus.of(database),
            broker=ComponentStatus.of(broker),
            embedded=context.settings.embedded,
            version=__version__,
        )
