"""Schema extensions shared by every operation (passed to the schema as classes)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import structlog
from graphql import GraphQLError
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from strawberry.extensions import SchemaExtension
from strawberry.schema.exceptions import InvalidOperationTypeError

from server.broker import BrokerUnavailable
from server.errors import ServiceUnavailable, UserError
from server.requestid import current_request_id

log = structlog.get_logger(__name__)

# Messages graphql-core and strawberry's limiters use, mapped to codes clients can switch on.
# The parser's own limits are syntax errors too, so they come before "Syntax Error".
_VALIDATION_CODES = (
    ("Document contains more than", "TOO_MANY_TOKENS"),
    ("Source contains more than", "QUERY_TOO_LARGE"),
    ("Syntax Error", "GRAPHQL_PARSE_FAILED"),
    ("exceeds maximum operation depth", "QUERY_TOO_DEEP"),
    ("aliases found", "TOO_MANY_ALIASES"),
    ("introspection has been disabled", "INTROSPECTION_DISABLED"),
    ("got invalid value", "BAD_USER_INPUT"),
    ("has invalid value", "BAD_USER_INPUT"),
    ("Expected value of type", "BAD_USER_INPUT"),
    ("Expected type", "BAD_USER_INPUT"),
)


class ResponseMeta(SchemaExtension):
    """Adds `extensions.requestId` and `extensions.latencyMs` to every response."""

    _started: float = 0.0

    def on_operation(self) -> Iterator[None]:
        self._started = time.perf_counter()
        yield

    def get_results(self) -> dict[str, Any]:
        latency = (time.perf_counter() - self._started) * 1000 if self._started else 0.0
        return {"requestId": current_request_id(), "latencyMs": round(latency, 3)}


class ErrorPolicy(SchemaExtension):
    """Every error gets `extensions.code`; unexpected ones are masked and logged.

    A client sees its own mistakes in full (bad cursor, page size, dates, limits), a clear
    SERVICE_UNAVAILABLE while the database or broker is down, and for anything else only
    "Internal server error" with the request id that finds the stack trace in the logs.
    """

    def on_operation(self) -> Iterator[None]:
        yield
        result = self.execution_context.result
        errors = getattr(result, "errors", None)
        if result is not None and errors:
            result.errors = [classify_error(error) for error in errors]


def classify_error(error: GraphQLError) -> GraphQLError:
    """`error` with its `extensions.code`; an unexpected one masked (and logged)."""
    original = error.original_error
    if original is None or (
        error.path is None and isinstance(original, ValueError | TypeError | GraphQLError)
    ):
        # Parsing, validation and variable coercion: the client's request, not our code. An
        # error made with its code (the limits, the cost) keeps it.
        code = (error.extensions or {}).get("code")
        return _with_code(error, code if isinstance(code, str) else _validation_code(error.message))
    if isinstance(original, UserError):
        return _with_code(error, original.code, **original.extensions)
    if isinstance(original, InvalidOperationTypeError):
        # A query or mutation sent as a stream (multipart, server-sent events): the client's.
        reason = original.as_http_error_reason("a subscription stream")
        return _replace(error, f"{reason}: send them as a plain POST or GET", "BAD_REQUEST")
    if _is_unavailable(original):
        log.warning("dependency unavailable", error=str(original).splitlines()[0][:200])
        unavailable = ServiceUnavailable(
            "the database or broker is unavailable; retry in a few seconds"
        )
        return _replace(error, str(unavailable), unavailable.code)
    log.error("unexpected error in resolver", exc_info=original, path=error.path)
    return _replace(
        error,
        f"Internal server error (request {current_request_id()})",
        "INTERNAL_SERVER_ERROR",
    )


def _validation_code(message: str) -> str:
    for needle, code in _VALIDATION_CODES:
        if needle in message:
            return code
    return "GRAPHQL_VALIDATION_FAILED"


# SQLSTATEs of a database that cannot serve now but will: class 08 (connection exception),
# shutting down or starting up (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect
# now: "the database system is shutting down" / "is starting up"), too many connections (53300).
_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"})


def _is_unavailable(error: BaseException) -> bool:
    """Whether `error` says the database or the broker cannot serve now (a retry may succeed):
    the error itself, or any error it wraps (SQLAlchemy's `orig`, the driver's cause)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(
            current, OperationalError | PoolTimeout | BrokerUnavailable | ConnectionError | OSError
        ):
            return True
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        state = getattr(current, "sqlstate", None) or getattr(current, "pgcode", None)
        if isinstance(state, str) and (state.startswith("08") or state in _UNAVAILABLE_SQLSTATES):
            return True
        wrapped = getattr(current, "orig", None) if isinstance(current, DBAPIError) else None
        current = wrapped if isinstance(wrapped, BaseException) else current.__cause__
    return False


def _with_code(error: GraphQLError, code: str, **extra: Any) -> GraphQLError:
    error.extensions = {**(error.extensions or {}), **extra, "code": code}
    return error


def _replace(error: GraphQLError, message: str, code: str) -> GraphQLError:
    return GraphQLError(
        message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=None,
        extensions={"code": code},
    )
