"""Errors a client can act on: each has a code that lands in the GraphQL error's extensions.

Part of the core: the schema raises them, and so do the transports and middleware above it
(API keys, rate limits, the live server) when they answer before or beside the schema.
"""

from __future__ import annotations

from typing import Any

from graphql import GraphQLError


class UserError(Exception):
    """A client's mistake or an expected condition; shown as is, with `extensions.code`."""

    code = "BAD_USER_INPUT"

    def __init__(self, message: str, *, code: str | None = None, **extensions: Any) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.extensions = extensions


class InvalidCursor(UserError):
    code = "INVALID_CURSOR"


class InvalidPageSize(UserError):
    code = "INVALID_PAGE_SIZE"


class UnknownSource(UserError):
    code = "UNKNOWN_SOURCE"


class Unauthenticated(UserError):
    code = "UNAUTHENTICATED"


class RateLimited(UserError):
    code = "RATE_LIMITED"


class ServiceUnavailable(UserError):
    """A dependency (database, broker, queue) is down; retrying later will work."""

    code = "SERVICE_UNAVAILABLE"


def graphql_error(error: UserError) -> GraphQLError:
    """`error` as a GraphQLError with its code in `extensions`, for errors raised before an
    operation's result exists (a subscription's arguments), which ErrorPolicy does not see."""
    extensions = {**error.extensions, "code": error.code}
    return GraphQLError(str(error), extensions=extensions, original_error=error)
