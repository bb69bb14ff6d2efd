"""The per-request context every resolver receives."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from starlette.requests import Request
from starlette.websockets import WebSocket

from schema.loaders import Loaders, create_loaders
from server.broker import Broker
from server.queue import JobQueue
from server.settings import Settings

if TYPE_CHECKING:
    # Only for the annotation: the cache's module imports what imports this one.
    from schema.live.hub import LiveHub
    from schema.prices.cache import PriceCache


@dataclass(slots=True)
class Context:
    """Built per request by the GraphQL app from what the lifespan put on `app.state`."""

    request: Request | WebSocket
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[Any]
    broker: Broker
    request_id: str
    queue: JobQueue
    price_cache: PriceCache
    # The process's live hub (subscriptions); None where no app runs one.
    live: LiveHub | None = None
    # The API key a WebSocket client sent in connection_init (HTTP keys are in the headers).
    api_key: str | None = None
    # Loaders read the primary, never a read replica (DATABASE_READ_URL): subscriptions, whose
    # prices and runs may be newer than what a lagging replica has replayed.
    primary_reads: bool = False
    # The data loaders, made on first use (`loaders`): most requests use none.
    _loaders: Loaders | None = field(default=None, repr=False)

    @property
    def loaders(self) -> Loaders:
        """This request's data loaders (one batch and cache per request)."""
        if self._loaders is None:
            self._loaders = create_loaders(self.engine, primary=self.primary_reads)
        return self._loaders

    def read_primary(self) -> None:
        """From now on the loaders read the primary (a subscription's fields)."""
        if not self.primary_reads:
            self.primary_reads = True
            self._loaders = None

    def renew_loaders(self) -> None:
        """Forget what the loaders cached: the next use makes new ones."""
        self._loaders = None
