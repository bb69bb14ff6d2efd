"""The ASGI application: GraphQL over HTTP and WebSocket, health probes and metrics."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL

from schema.context import Context
from schema.loaders import create_loaders
from schema.prices.cache import PriceCache
from schema.root import build_schema
from server.broker import create_broker
from server.db import create_engine, create_sessionmaker, ping
from server.limits import QuerySizeMiddleware
from server.metrics import Metrics, MetricsMiddleware, metrics_endpoint
from server.queue import open_job_queue
from server.ratelimit import RateLimitMiddleware, create_request_limiter
from server.requestid import RequestIdMiddleware, current_request_id
from server.settings import Settings


class GraphQLApp(GraphQL[Context, None]):
    """Strawberry's ASGI app with our typed per-request context."""

    async def get_context(self, request: Request | WebSocket, response: Any = None) -> Context:
        state = request.app.state
        return Context(
            request=request,
            settings=state.settings,
            engine=state.engine,
            sessionmaker=state.sessionmaker,
            broker=state.broker,
            request_id=current_request_id(),
            loaders=create_loaders(state.engine),
            queue=state.queue,
            price_cache=state.price_cache,
        )


def create_app(settings: Settings, *, with_worker: bool = False) -> Starlette:
    """Build the app; the lifespan creates and disposes the engine, the broker, the job queue
    and the request rate limiter.

    `with_worker` (used by `kasparro up`) also runs ingestion inside this process, sharing the
    engine and broker: the embedded scheduler, or an arq worker when REDIS_URL is set.
    """

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine = create_engine(settings)
        broker = create_broker(settings.redis_url)
        app.state.settings = settings
        app.state.engine = engine
        app.state.sessionmaker = create_sessionmaker(engine)
        app.state.broker = broker
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(engine.dispose)
            stack.push_async_callback(broker.close)
            # Hot reads (latestPrices, the newest candles): stopped before the broker closes.
            app.state.price_cache = price_cache = PriceCache(engine, broker)
            stack.push_async_callback(price_cache.stop)
            await price_cache.start()
            app.state.rate_limiter = limiter = create_request_limiter(settings)
            if limiter is not None:
                stack.push_async_callback(limiter.close)
            app.state.queue = await stack.enter_async_context(
                open_job_queue(settings, engine=engine, broker=broker)
            )
            if with_worker:
                from workers.inprocess import run_in_process

                await stack.enter_async_context(run_in_process(settings, engine, broker))
            yield

    metrics = Metrics()
    graphql = GraphQLApp(
        build_schema(settings),
        graphql_ide="graphiql" if settings.graphiql else None,
    )
    app = Starlette(
        routes=[
            Route("/graphql", graphql, methods=["GET", "POST"]),
            WebSocketRoute("/graphql", graphql),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
        ],
        middleware=[
            Middleware(RequestIdMiddleware),
            Middleware(MetricsMiddleware, metrics=metrics),
            Middleware(RateLimitMiddleware, settings=settings),
            Middleware(QuerySizeMiddleware, max_bytes=settings.max_query_bytes),
        ],
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    return app


async def healthz(request: Request) -> Response:
    """The process is alive (no dependency is probed)."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready to serve: the database and the broker answer; 503 otherwise."""
    state = request.app.state
    database, broker = await asyncio.gather(ping(state.engine), state.broker.ping())
    body = {"database": "up" if database else "down", "broker": "up" if broker else "down"}
    ready = database and broker
    body["status"] = "ready" if ready else "unavailable"
    return JSONResponse(body, status_code=200 if ready else 503)
