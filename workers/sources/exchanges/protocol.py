"""What the stream and backfill code needs to know about a connection, beyond messages.

`KeepAlive` is an exchange's ping/pong rule. `RestRequest` is one REST call a backfill
paginator asks for (a path under the exchange's base URL and its query), so the paginators
stay pure and the HTTP client (retries, rate limits) stays in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlencode


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """How a connection is kept alive and when it is presumed dead.

    server_pings: the server sends protocol-level ping frames; each must be answered with a
        pong echoing its payload (the `websockets` client does this by itself while it reads).
    client_ping: an application-level ping message to send (given a request id) after
        `idle_seconds` of silence; None when the exchange has none.
    stale_after: seconds without any frame (data, heartbeat or pong) after which the client
        should close and reconnect, then fill the gap over REST.
    subscribe_within: seconds the server waits for the subscribe message before closing.
    """

    server_pings: bool
    client_ping: Callable[[int], str] | None
    idle_seconds: float
    stale_after: float
    subscribe_within: float | None = None


@dataclass(frozen=True, slots=True)
class RestRequest:
    """One REST call: `path` under the exchange's base URL, with `params` as the query."""

    path: str
    params: Mapping[str, str] = field(default_factory=dict)

    def url(self, base_url: str) -> str:
        query = urlencode(dict(self.params))
        return f"{base_url.rstrip('/')}{self.path}" + (f"?{query}" if query else "")
