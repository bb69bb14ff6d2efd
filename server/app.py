"""The ASGI application: GraphQL over HTTP and WebSocket, health probes and metrics."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from graphql import GraphQLError, OperationType, get_operation_ast, parse
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.subscriptions import GRAPHQL_SSE_PROTOCOL, MULTIPART_SUBSCRIPTION_PROTOCOL
from strawberry.types import ExecutionResult

from schema.compiled.catalog import CATALOG
from schema.compiled.plan import Compiler
from schema.context import Context
from schema.loaders import create_loaders
from schema.prices.cache import PriceCache
from schema.root import LIVE_STREAMS, build_schema
from server.auth import ReadKeyMiddleware
from server.broker import create_broker
from server.broker.fanout import FanoutBroker
from server.compiled import CompiledGraphQL
from server.db import create_engine, create_sessionmaker, ping
from server.dbmetrics import register_pool
from server.httpcache import HttpCacheMiddleware
from server.limits import QuerySizeMiddleware
from server.live.hub import LiveHub
from server.live.websocket import LiveRouteMiddleware, LiveServer
from server.metrics import Metrics, MetricsMiddleware, metrics_endpoint
from server.persisted import PersistedQueryMiddleware, create_persisted_store
from server.queue import open_job_queue
from server.ratelimit import RateLimitMiddleware, create_request_limiter
from server.requestid import RequestIdMiddleware, current_request_id
from server.settings import Settings
from server.web import web_routes
from server.web.graphiql import graphiql_html
from workers.metrics import IngestMetrics
from workers.pipeline.runs import PRICES_CHANNEL, RUNS_CHANNEL


class GraphQLApp(GraphQL[Context, None]):
    """Strawberry's ASGI app with our typed per-request context."""

    async def execute_single(self, *args: Any, **kwargs: Any) -> ExecutionResult:
        """A plain (non-streaming) HTTP request: a subscription gets a clear error saying how
        to stream it, instead of being run once as if it were a query."""
        request_data = kwargs.get("request_data", args[-1] if args else None)
        query = getattr(request_data, "query", None)
        if isinstance(query, str) and "subscription" in query:
            name = getattr(request_data, "operation_name", None)
            if _is_subscription(query, name):
                error = GraphQLError(SUBSCRIPTION_OVER_HTTP, extensions={"code": "STREAM_REQUIRED"})
                meta = {"requestId": current_request_id(), "latencyMs": 0.0}
                return ExecutionResult(data=None, errors=[error], extensions=meta)
        return await super().execute_single(*args, **kwargs)

    async def get_context(self, request: Request | WebSocket, response: Any = None) -> Context:
        return self.context_for(request)

    def context_for(self, request: Request | WebSocket) -> Context:
        """The context of one request, or of a WebSocket connection's operations."""
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
            live=getattr(state, "live", None),
        )

    def encode_json(self, data: object) -> bytes:
        """Response bodies with orjson, as the compiled path writes them (server/compiled.py)."""
        return orjson.dumps(data)

    # GraphiQL's page, from the app's own assets when installed (server/web/graphiql.py).
    ide_html: str | None = None

    async def render_graphql_ide(self, request: Request) -> Response:
        return HTMLResponse(self.ide_html or self.graphql_ide_html)


SUBSCRIPTION_OVER_HTTP = (
    "subscriptions stream: connect a WebSocket to /graphql (graphql-transport-ws or graphql-ws), "
    "or POST with `Accept: multipart/mixed;subscriptionSpec=1.0` or `Accept: text/event-stream`"
)


def _is_subscription(query: str, operation_name: str | None) -> bool:
    try:
        operation = get_operation_ast(parse(query), operation_name)
    except GraphQLError:
        return False  # the normal path reports the syntax error
    return operation is not None and operation.operation == OperationType.SUBSCRIPTION


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
        if settings.redis_url is not None:
            # One Redis subscription per process, fanned out to the cache and every
            # subscription in memory.
            broker = FanoutBroker(broker, (PRICES_CHANNEL, RUNS_CHANNEL))
        app.state.settings = settings
        app.state.engine = engine
        app.state.sessionmaker = create_sessionmaker(engine)
        app.state.broker = broker
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(engine.dispose)
            stack.push_async_callback(broker.close)
            if isinstance(broker, FanoutBroker):
                await broker.start()
            # Hot reads (latestPrices, the newest candles): stopped before the broker closes.
            app.state.price_cache = price_cache = PriceCache(engine, broker)
            stack.push_async_callback(price_cache.stop)
            await price_cache.start()
            # Live subscriptions: the hub reads each commit once; closed before the broker.
            app.state.live = hub = LiveHub(
                engine, broker, on_delivered=delivered, on_received=received
            )
            stack.push_async_callback(hub.stop)
            await hub.start()
            await live.start(hub)
            stack.push_async_callback(live.stop)
            app.state.rate_limiter = limiter = create_request_limiter(settings)
            if limiter is not None:
                stack.push_async_callback(limiter.close)
            # Automatic persisted queries' texts (server/persisted.py), shared through Redis.
            app.state.persisted_queries = persisted = create_persisted_store(settings)
            stack.push_async_callback(persisted.close)
            # Pool use is read from this engine at scrape time, while the app runs.
            pool = register_pool(metrics.registry, engine)
            stack.callback(metrics.registry.unregister, pool)
            app.state.queue = await stack.enter_async_context(
                open_job_queue(settings, engine=engine, broker=broker, metrics=ingest_metrics)
            )
            if with_worker:
                from workers.inprocess import run_in_process

                await stack.enter_async_context(
                    run_in_process(settings, engine, broker, metrics=ingest_metrics)
                )
            yield

    metrics = Metrics()
    # Runs of this process (triggered, or scheduled by `kasparro up`) count in the same registry.
    ingest_metrics = IngestMetrics(metrics.registry)
    schema = build_schema(settings, metrics=metrics)
    graphql = GraphQLApp(
        schema,
        graphql_ide="graphiql" if settings.graphiql else None,
        # Subscriptions over HTTP too: multipart responses (Apollo Client, urql) and
        # graphql-sse. WebSocket subscriptions are the live server's (server.live).
        subscription_protocols=(MULTIPART_SUBSCRIPTION_PROTOCOL, GRAPHQL_SSE_PROTOCOL),
    )
    if settings.graphiql:
        graphql.ide_html = graphiql_html()
    live = LiveServer(settings, graphql.schema, LIVE_STREAMS, graphql.context_for, metrics)
    # Hot query shapes skip per-field resolution (schema.compiled); the rest is Strawberry's.
    endpoint = CompiledGraphQL(graphql, Compiler(schema, CATALOG), metrics)

    def delivered(topic: str, count: int) -> None:
        metrics.messages_delivered.labels(topic).inc(count)

    def received(channel: str) -> None:
        metrics.broker_received.labels(channel).inc()

    app = Starlette(
        routes=[
            Route("/graphql", endpoint, methods=["GET", "POST"]),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
            *web_routes(settings),
        ],
        middleware=[
            Middleware(RequestIdMiddleware),
            Middleware(MetricsMiddleware, metrics=metrics),
            Middleware(RateLimitMiddleware, settings=settings),
            Middleware(ReadKeyMiddleware, settings=settings),
            Middleware(QuerySizeMiddleware, max_bytes=settings.max_query_bytes),
            # In front of whatever runs GraphQL: GET caching (ETag, Cache-Control; also sees
            # the persisted-query errors) and persisted queries resolved to their text.
            Middleware(
                HttpCacheMiddleware,
                max_age=settings.http_cache_max_age,
                private=settings.require_read_key,
            ),
            Middleware(PersistedQueryMiddleware, documents=schema.documents),
            # WebSocket /graphql: the live server, with the ASGI server's own `send`.
            Middleware(LiveRouteMiddleware, live=live),
        ],
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    app.state.graphql_endpoint = endpoint
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
