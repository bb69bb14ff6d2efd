"""/graphql over HTTP through the compiled path first (schema.compiled), Strawberry otherwise.

A GET or a JSON POST whose document the compiled path has a plan for is answered here: the
request's body is parsed once (server.negotiation checks it as the executor does), its plan
looked up by text, run, and the response written with orjson in the negotiated media type.
Everything else (GraphiQL's page, streaming requests, an unacceptable Accept, malformed
requests, documents or requests the compiled path leaves alone, and every error) goes to the
Strawberry app, with the body replayed, so what a client sees never depends on which path
answered.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from schema.compiled.plan import Compiler
from schema.metrics import record_operation
from server.limits import read_body, replay_body
from server.metrics import Metrics
from server.negotiation import (
    GraphQLParams,
    RequestError,
    params_from_body,
    params_from_query_string,
    response_media_type,
)
from server.requestid import current_request_id

# Accept values that ask for something other than one JSON response.
_STREAMING = ("multipart/", "text/event-stream", "text/html")


class CompiledGraphQL:
    """The /graphql endpoint: `compiler`'s plans first, `graphql` (Strawberry) for the rest."""

    def __init__(self, graphql: Any, compiler: Compiler, metrics: Metrics | None = None) -> None:
        self.graphql: ASGIApp = graphql
        self.compiler = compiler
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope.get("method")
        if scope["type"] != "http" or method not in ("GET", "POST"):
            await self.graphql(scope, receive, send)
            return
        headers = Headers(scope=scope)
        accept = headers.get("accept")
        media_type = response_media_type(accept)
        if media_type is None or any(kind in (accept or "") for kind in _STREAMING):
            await self.graphql(scope, receive, send)
            return
        try:
            if method == "POST":
                body = await read_body(receive)
                receive = replay_body(body, receive)
                params = params_from_body(body, headers.get("content-type"))
            else:
                query_string = scope.get("query_string", b"").decode("latin-1")
                params = params_from_query_string(parse_qsl(query_string, keep_blank_values=True))
        except RequestError:
            params = None  # the executor answers it, as it answers every error
        if (
            params is not None
            and params.query is not None
            and await self._answer(scope, receive, send, params.query, params, media_type)
        ):
            self._count("compiled")
            return
        self._count("executor")
        await self.graphql(scope, receive, send)

    def _count(self, path: str) -> None:
        if self.metrics is not None:
            self.metrics.child(self.metrics.compiled_requests, path).inc()

    async def _answer(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        query: str,
        params: GraphQLParams,
        media_type: str,
    ) -> bool:
        """Answer with the compiled plan; False when Strawberry must answer instead."""
        started = time.perf_counter()
        plan = self.compiler.plan(query, params.operation_name)
        if plan is None:
            return False
        # The request's own checks (operation, variables, cost): Strawberry answers a refusal.
        documents = self.compiler.strawberry.documents
        if documents.request(query, params.operation_name, params.variables).errors:
            return False
        context = self.graphql.context_for(Request(scope, receive))  # type: ignore[attr-defined]
        data = await plan.execute(context, params.variables)
        if data is None:
            return False
        elapsed = time.perf_counter() - started
        meta = {"requestId": current_request_id(), "latencyMs": round(elapsed * 1000, 3)}
        payload = orjson.dumps({"data": data, "extensions": meta})
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-length", str(len(payload)).encode()),
                    (b"content-type", media_type.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
        if self.metrics is not None:
            record_operation(self.metrics, plan.name, "query", elapsed, [])
        return True
