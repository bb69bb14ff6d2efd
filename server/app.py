"""The ASGI application: GraphQL over HTTP and WebSocket, health probes and metrics."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any, cast

import orjson
from cross_web import AsyncHTTPRequestAdapter, HTTPException
from graphql import GraphQLError, OperationType, get_operation_ast, parse
from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.http import GraphQLHTTPResponse, GraphQLRequestData
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.subscriptions import GRAPHQL_SSE_PROTOCOL, MULTIPART_SUBSCRIPTION_PROTOCOL
from strawberry.types import ExecutionResult

from schema.compiled.catalog import CATALOG
from schema.compiled.plan import Compiler
from schema.context import Context
from schema.extensions import classify_error
from schema.live.hub import LiveHub
from schema.prices.cache import PriceCache
from schema.root import LIVE_STREAMS, build_schema
from server.auth import ReadKeyMiddleware
from server.broker import create_broker
from server.broker.channels import PRICES_CHANNEL, RUNS_CHANNEL
from server.broker.fanout import FanoutBroker
from server.compiled import CompiledGraphQL
from server.db import (
    create_engine,
    create_read_engine,
    create_sessionmaker,
    ping,
    replica_status,
    use_replica,
)
from server.dbmetrics import register_pool
from server.debug_memory import debug_routes
from server.httpcache import HttpCacheMiddleware
from server.limits import QuerySizeMiddleware, error_response
from server.live.websocket import LiveRouteMiddleware, LiveServer
from server.metrics import Metrics, MetricsMiddleware, metrics_endpoint
from server.negotiation import (
    ACCEPTABLE,
    JSON,
    METHOD_NOT_ALLOWED,
    NOT_ACCEPTABLE,
    RequestError,
    code_of_status,
    params_from_body,
    params_from_query_string,
    require_query,
    response_media_type,
    shape_result,
)
from server.persisted import PersistedQueryMiddleware, create_persisted_store
from server.ratelimit import (
    ClientAddressMiddleware,
    RateLimitMiddleware,
    create_request_limiter,
)
from server.requestid import current_request_id
from server.requestid_middleware import RequestIdMiddleware
from server.settings import Settings
from server.web import web_routes
from server.web.graphiql import graphiql_headers, graphiql_html
from server.web.headers import content_security_policy, page_headers
from workers.jobqueue import open_job_queue
from workers.metrics import IngestMetrics

# The media type of the HTTP response being made (server/negotiation.py), for create_response.
_media_type: ContextVar[str] = ContextVar("graphql_response_media_type", default=JSON)


class GraphQLApp(GraphQL[Context, None]):
    """Strawberry's ASGI app with our typed per-request context, GraphQL over HTTP as its
    specification says (server/negotiation.py): the negotiated media type and status codes,
    and every refused request answered with a JSON GraphQL error."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        request = Request(scope, receive)
        media_type = response_media_type(request.headers.get("accept"))
        response: Response
        if media_type is None and not self._answers_in_own_media_type(request):
            response = error_response(
                f"none of the media types in Accept can be served; /graphql answers {ACCEPTABLE}",
                NOT_ACCEPTABLE,
                406,
            )
        else:
            token = _media_type.set(media_type or JSON)
            try:
                response = await self.run(request)
            except RequestError as exc:
                response = error_response(exc.message, exc.code, exc.status, headers=exc.headers)
            except HTTPException as exc:
                code = code_of_status(exc.status_code)
                # A 405 says which methods are: GET and POST (RFC 9110, 15.5.6).
                allow = {"Allow": "GET, POST"} if exc.status_code == 405 else None
                response = error_response(exc.reason, code, exc.status_code, headers=allow)
            finally:
                _media_type.reset(token)
        await response(scope, receive, send)

    def _answers_in_own_media_type(self, request: Request) -> bool:
        """GraphiQL's page, or a stream (multipart, server-sent events)."""
        adapter = self.request_adapter_class(request)
        return self.should_render_graphql_ide(adapter) or (
            self._get_stream_transport_from_headers(request.headers) is not None
        )

    async def parse_http_body(self, request: AsyncHTTPRequestAdapter) -> GraphQLRequestData:
        """The request's parameters, checked as the compiled path checks them (a malformed
        request is a RequestError: 400, or 415 for a body that is not JSON)."""
        transport = self._get_stream_transport_from_headers(request.headers)
        if request.method == "GET":
            query = request.query_params
            pairs = (
                query.multi_items()
                if isinstance(query, QueryParams)
                else [(name, value) for name, value in query.items() if isinstance(value, str)]
            )
            params = params_from_query_string(pairs)
        else:
            params = params_from_body(await request.get_body(), request.content_type)
        return GraphQLRequestData(
            query=require_query(params),
            variables=params.variables,
            operation_name=params.operation_name,
            extensions=params.extensions,
            protocol=transport.protocol if transport is not None else "http",
        )

    async def execute_single(self, *args: Any, **kwargs: Any) -> ExecutionResult:
        """A plain (non-streaming) HTTP request: a subscription gets a clear error saying how
        to stream it, instead of being run once as if it were a query. An operation that
        cannot be chosen is a GraphQL request error; a mutation over GET is a 405."""
        request_data = kwargs.get("request_data", args[-1] if args else None)
        query = getattr(request_data, "query", None)
        meta = {"requestId": current_request_id(), "latencyMs": 0.0}
        if isinstance(query, str) and "subscription" in query:
            name = getattr(request_data, "operation_name", None)
            if _is_subscription(query, name):
                error = GraphQLError(SUBSCRIPTION_OVER_HTTP, extensions={"code": "STREAM_REQUIRED"})
                return ExecutionResult(data=None, errors=[error], extensions=meta)
        try:
            return await super().execute_single(*args, **kwargs)
        except HTTPException as exc:
            cause = exc.__cause__
            if isinstance(cause, CannotGetOperationTypeError):
                code = {"code": OPERATION_RESOLUTION_FAILURE}
                return ExecutionResult(
                    data=None, errors=[GraphQLError(exc.reason, extensions=code)], extensions=meta
                )
            method = getattr(kwargs.get("request_adapter"), "method", None)
            if isinstance(cause, InvalidOperationTypeError) and method == "GET":
                message = f"{exc.reason}: send them with POST"
                raise RequestError(message, 405, METHOD_NOT_ALLOWED, {"Allow": "POST"}) from exc
            raise

    def create_response(
        self,
        response_data: GraphQLHTTPResponse | list[GraphQLHTTPResponse],
        sub_response: Response,
    ) -> Response:
        """The result in the negotiated media type, with that type's status code."""
        media_type = _media_type.get()
        body: object = response_data
        status = 200
        if isinstance(response_data, dict):
            body, status = shape_result(cast(dict[str, Any], response_data), media_type)
        response = Response(
            self.encode_json(body),
            status_code=sub_response.status_code or status,
            media_type=media_type,
        )
        response.headers.raw.extend(sub_response.headers.raw)
        if sub_response.background:
            response.background = sub_response.background
        return response

    async def process_result(self, request: Request, result: ExecutionResult) -> Any:
        """Every result with its errors' codes, streamed ones included: a stream's first
        message and its events do not pass through the schema's ErrorPolicy."""
        if result.errors:
            result.errors = [
                error if (error.extensions or {}).get("code") else classify_error(error)
                for error in result.errors
            ]
        return await super().process_result(request, result)

    def decode_json(self, data: str | bytes) -> object:
        return orjson.loads(data)

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
            queue=state.queue,
            price_cache=state.price_cache,
            live=getattr(state, "live", None),
            # A WebSocket's operations are mostly subscriptions, whose rows the read replica
            # may not have replayed yet: its loaders read the primary.
            primary_reads=isinstance(request, WebSocket),
        )

    def encode_json(self, data: object) -> bytes:
        """Response bodies with orjson, as the compiled path writes them (server/compiled.py)."""
        return orjson.dumps(data)

    # GraphiQL's page, from the app's own assets when installed (server/web/graphiql.py).
    ide_html: str | None = None

    async def render_graphql_ide(self, request: Request) -> Response:
        html = self.ide_html or self.graphql_ide_html
        return HTMLResponse(html, headers=graphiql_headers(html))


# The code of a request whose operation cannot be chosen (an unknown operationName).
OPERATION_RESOLUTION_FAILURE = "OPERATION_RESOLUTION_FAILURE"
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
            # One Redis subscription per process, fanned out in memory (to the live hub, which
            # feeds the price cache and every subscription).
            broker = FanoutBroker(broker, (PRICES_CHANNEL, RUNS_CHANNEL))
        app.state.settings = settings
        app.state.engine = engine
        app.state.sessionmaker = create_sessionmaker(engine)
        app.state.broker = broker
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(engine.dispose)
            # DATABASE_READ_URL: plain query reads of `engine` go to the replica (server.db);
            # writes, the live hub and health of the primary stay on `engine`.
            app.state.read_replica = replica = create_read_engine(settings)
            if replica is not None:
                stack.push_async_callback(replica.dispose)
                use_replica(engine, replica)
                stack.callback(use_replica, engine, None)
                watch = asyncio.create_task(watch_replica(replica, metrics))
                stack.push_async_callback(_cancel, watch)
            stack.push_async_callback(broker.close)
            if isinstance(broker, FanoutBroker):
                await broker.start()
            # Hot reads (latestPrices, the newest candles), fed by the live hub: stopped after it.
            app.state.price_cache = price_cache = PriceCache(engine)
            stack.push_async_callback(price_cache.stop)
            # Live subscriptions: the hub reads each commit once, and hands every price event to
            # the cache; closed before the broker.
            app.state.live = hub = LiveHub(
                engine,
                broker,
                on_delivered=delivered,
                on_received=received,
                # Without Redis: commits by other processes are found in the database.
                poll_interval=settings.live_poll_interval,
                price_listeners=[price_cache],
            )
            stack.push_async_callback(hub.stop)
            await hub.start()
            await price_cache.start()  # once the hub is subscribed: nothing falls in between
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
            Route("/graphql", endpoint),  # other methods: a JSON 405 from the endpoint
            Route("/", home),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
            *web_routes(settings),
            *debug_routes(settings),  # KASPARRO_DEBUG_MEMORY: operators only
        ],
        middleware=[
            # The client's address behind KASPARRO_TRUSTED_PROXIES, for all that follows.
            Middleware(ClientAddressMiddleware, settings=settings),
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


async def home(request: Request) -> Response:
    """Where things are: a small page for a browser, JSON for anything else."""
    settings: Settings | None = getattr(request.app.state, "settings", None)
    links = {"graphql": "/graphql"}
    if settings is None or settings.dashboard:
        links["dashboard"] = "/dashboard"
    links |= {"health": "/healthz", "readiness": "/readyz", "metrics": "/metrics"}
    if "text/html" not in request.headers.get("accept", ""):
        return JSONResponse({"service": "kasparro", "links": links})
    items = "".join(f'<li><a href="{url}">{url}</a> ({name})</li>' for name, url in links.items())
    return HTMLResponse(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>kasparro</title></head>"
        "<body><h1>kasparro</h1><p>Crypto prices over GraphQL.</p>"
        f"<ul>{items}</ul></body></html>",
        headers=page_headers(content_security_policy()),
    )


async def healthz(request: Request) -> Response:
    """The process is alive (no dependency is probed)."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready to serve: the database and the broker answer (and the read replica, when there is
    one, with its replay lag in seconds); 503 otherwise."""
    state = request.app.state
    database, broker = await asyncio.gather(ping(state.engine), state.broker.ping())
    body: dict[str, Any] = {
        "database": "up" if database else "down",
        "broker": "up" if broker else "down",
    }
    ready = database and broker
    replica = getattr(state, "read_replica", None)
    if replica is not None:
        reachable, lag = await replica_status(replica)
        record_replica(state.metrics, reachable, lag)
        body["replica"] = "up" if reachable else "down"
        body["replicaLagSeconds"] = lag
        ready = ready and reachable
    body["status"] = "ready" if ready else "unavailable"
    return JSONResponse(body, status_code=200 if ready else 503)


# Seconds between two probes of the read replica for its metrics.
REPLICA_PROBE_INTERVAL = 5.0


async def watch_replica(replica: Any, metrics: Metrics) -> None:
    """Keep the replica's gauges (up, replay lag) current while the app runs."""
    while True:
        reachable, lag = await replica_status(replica)
        record_replica(metrics, reachable, lag)
        await asyncio.sleep(REPLICA_PROBE_INTERVAL)


def record_replica(metrics: Metrics, reachable: bool, lag: float | None) -> None:
    metrics.replica_up.set(1 if reachable else 0)
    metrics.replica_lag.set(float("nan") if lag is None else lag)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
