"""The outermost middleware: every request gets an id (server.requestid) and every HTTP response
carries it in X-Request-ID, an unexpected error's included: whatever raises below this
middleware is logged here (with its traceback, for operators only) and answered with a JSON 500
whose GraphQL error has code INTERNAL_SERVER_ERROR and the request id.
"""

from __future__ import annotations

import structlog
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.negotiation import INTERNAL_SERVER_ERROR, GraphQLErrorResponse
from server.requestid import HEADER, request_id_from, reset_request_id, set_request_id

log = structlog.get_logger(__name__)


def internal_error(request_id: str) -> GraphQLErrorResponse:
    """The answer to a request that failed in the server's own code: no detail but the id."""
    message = f"Internal server error (request {request_id})"
    body = {
        "data": None,
        "errors": [{"message": message, "extensions": {"code": INTERNAL_SERVER_ERROR}}],
        "extensions": {"requestId": request_id},
    }
    return GraphQLErrorResponse(body, status_code=500, headers={"Cache-Control": "no-store"})


class RequestIdMiddleware:
    """Sets the request id for the request's context and echoes it in X-Request-ID; answers an
    unexpected error with a JSON 500 (see the module's docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        sent = dict(scope.get("headers", [])).get(HEADER.encode(), b"").decode("latin-1")
        request_id = request_id_from(sent)
        token = set_request_id(request_id)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                MutableHeaders(scope=message)[HEADER] = request_id
            await send(message)

        try:
            if scope["type"] == "websocket":
                # A WebSocket's frames go straight through: no wrapper costs on every message.
                await self.app(scope, receive, send)
                return
            try:
                await self.app(scope, receive, send_with_id)
            except Exception as exc:
                log.error(
                    "unhandled error while answering a request",
                    exc_info=exc,
                    method=scope.get("method"),
                    path=scope.get("path"),
                )
                if started:
                    raise  # part of the response is out: the server must drop the connection
                await internal_error(request_id)(scope, receive, send_with_id)
        finally:
            reset_request_id(token)
