"""The current request's id: taken from X-Request-ID when the client sends a sane one, else
generated, and held in a context variable for the request's whole handling.

Part of the core: log lines (server.logging) and GraphQL responses (schema.extensions) read it;
the middleware that sets it for each request and echoes it in X-Request-ID is the app's
(server.requestid_middleware).
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar, Token

HEADER = "x-request-id"
_VALID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
_request_id: ContextVar[str] = ContextVar("request_id", default="")


def current_request_id() -> str:
    return _request_id.get()


def new_request_id() -> str:
    return uuid.uuid4().hex


def request_id_from(sent: str) -> str:
    """The id a request goes by: the one the client sent when it is sane, else a new one."""
    return sent if _VALID.match(sent) else new_request_id()


def set_request_id(request_id: str) -> Token[str]:
    """Make `request_id` the current one; `reset_request_id(token)` restores the previous."""
    return _request_id.set(request_id)


def reset_request_id(token: Token[str]) -> None:
    _request_id.reset(token)
