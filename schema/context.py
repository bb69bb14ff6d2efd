"""The per-request context every resolver receives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from starlette.requests import Request
from starlette.websockets import WebSocket

from schema.loaders import Loaders
from server.broker import Broker
from server.queue import JobQueue
from server.settings import Settings

if TYPE_CHECKING:
    # Only for the annotation: the cache's module imports what imports this one.
    from schema.prices.cache import PriceCache
    from server.live.hub import LiveHub


@dataclass(slots=True)
class Context:
    """Built per request by the GraphQL app from what the lifespan put on `app.state`."""

    request: Request | WebSocket
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[Any]
    broker: Broker
    request_id: str
    loaders: Loaders
    queue: JobQueue
    price_cache: PriceCache
    # The process's live hub (subscriptions); None where no app runs one.
    live: LiveHub | None = None
    # The API key a WebSocket client sent in connection_init (HTTP keys are in the headers).
    api_key: str | None = None
