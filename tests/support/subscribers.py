"""Real GraphQL WebSocket clients that collect what a subscription delivers, in the background.

    async with gql_subscriber(address.graphql_ws, PRICE_UPDATES, {"symbols": ["BTC"]},
                              protocol=LEGACY_WS) as subscriber:
        await subscriber.wait_for_results(3)
    assert subscriber.ids() == [...]

`results` holds each message's value of the subscribed field (a Price for priceUpdates, a list
of prices for priceBatches), in arrival order. A subscription that ends with an error stores it,
and `check()` (called by every wait) raises it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Self

from gql import Client, GraphQLRequest
from gql.client import AsyncClientSession
from gql.transport.websockets import WebsocketsTransport
from graphql import FieldNode, OperationDefinitionNode

from tests.support.statements import eventually

# The two WebSocket subprotocols a GraphQL server speaks: the graphql-ws library's protocol,
# and the legacy one of subscriptions-transport-ws (confusingly named "graphql-ws").
TRANSPORT_WS = "graphql-transport-ws"
LEGACY_WS = "graphql-ws"

PRICE_FIELDS = "id cursor symbol source priceUsd"

PRICE_UPDATES = f"""
subscription PriceUpdates($symbols: [String!], $sources: [String!], $after: String) {{
  priceUpdates(symbols: $symbols, sources: $sources, after: $after) {{ {PRICE_FIELDS} }}
}}
"""

PRICE_BATCHES = f"""
subscription PriceBatches($symbols: [String!], $sources: [String!], $after: String) {{
  priceBatches(symbols: $symbols, sources: $sources, after: $after) {{ {PRICE_FIELDS} }}
}}
"""

Price = dict[str, Any]


class Subscriber:
    """What every client here shares: the results, the error, the waiting."""

    def __init__(self, field: str) -> None:
        self.field = field
        self.results: list[Any] = []
        self.error: BaseException | None = None
        self.ended = False  # no more results will come

    def receive(self, data: dict[str, Any] | None) -> None:
        if data is None or self.field not in data:
            raise AssertionError(f"a message without {self.field}: {data!r}")
        self.results.append(data[self.field])

    def check(self) -> None:
        """Raise the error the subscription ended with, if any."""
        if self.error is not None:
            raise AssertionError(f"the subscription failed: {self.error!r}") from self.error

    async def wait_until(
        self, predicate: Callable[[], bool], *, timeout: float = 10.0, what: str = "results"
    ) -> None:
        """Wait until `predicate()` holds; fail at once if the subscription failed or ended."""

        def done() -> bool:
            self.check()
            if predicate():
                return True
            if self.ended:
                raise AssertionError(f"the subscription ended before {what} ({self!r})")
            return False

        await eventually(done, timeout=timeout, what=f"{what} ({self!r})")

    async def wait_for_results(self, count: int, *, timeout: float = 10.0) -> None:
        """Wait until `count` messages have arrived."""
        await self.wait_until(lambda: len(self.results) >= count, timeout=timeout, what=f"{count}")

    def prices(self) -> list[Price]:
        """Every price received, in order (batches flattened)."""
        found: list[Price] = []
        for result in self.results:
            found.extend(result if isinstance(result, list) else [result])
        return found

    def ids(self) -> list[int]:
        return [int(price["id"]) for price in self.prices()]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.field}: {len(self.results)} results>"


class GqlSubscription(Subscriber):
    """One subscription on a `GqlConnection`, iterated in a background task."""

    def __init__(self, session: AsyncClientSession, request: GraphQLRequest, field: str) -> None:
        super().__init__(field)
        self.request = request
        self._task = asyncio.create_task(self._run(session), name=f"gql:{field}")

    async def _run(self, session: AsyncClientSession) -> None:
        try:
            async for data in session.subscribe(self.request):
                self.receive(data)
        except Exception as exc:
            self.error = exc
        finally:
            self.ended = True

    async def close(self) -> None:
        """Stop this subscription (the client sends complete/stop for it)."""
        if not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class GqlConnection:
    """One WebSocket connection of the Python `gql` client speaking exactly `protocol`, which
    can carry several subscriptions at once."""

    def __init__(self, url: str, *, protocol: str) -> None:
        self.url = url
        self.protocol = protocol
        self.transport = WebsocketsTransport(url=url, subprotocols=[protocol])
        self.client = Client(transport=self.transport)
        self.subscriptions: list[GqlSubscription] = []
        self._session: AsyncClientSession | None = None

    async def __aenter__(self) -> Self:
        """Connect and wait for connection_ack."""
        self._session = await self.client.connect_async()  # type: ignore[no-untyped-call]
        if self.transport.subprotocol != self.protocol:
            await self.close()
            chosen = self.transport.subprotocol
            raise AssertionError(f"asked for {self.protocol!r}; the server chose {chosen!r}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def subscribe(
        self, query: str, variables: dict[str, Any] | None = None, *, field: str | None = None
    ) -> GqlSubscription:
        """Start a subscription on this connection; `field` defaults to the root field."""
        if self._session is None:
            raise RuntimeError("enter the connection first")
        request = GraphQLRequest(query, variable_values=variables or {})
        subscription = GqlSubscription(self._session, request, field or _root_fields(request)[0])
        self.subscriptions.append(subscription)
        return subscription

    async def close(self) -> None:
        """Stop every subscription and close the connection."""
        for subscription in self.subscriptions:
            await subscription.close()
        if self._session is not None:
            self._session = None
            await self.client.close_async()  # type: ignore[no-untyped-call]


@asynccontextmanager
async def gql_subscriber(
    url: str,
    query: str,
    variables: dict[str, Any] | None = None,
    *,
    protocol: str,
    field: str | None = None,
) -> AsyncIterator[GqlSubscription]:
    """One subscription through the `gql` client on a connection of its own, closed (a client
    going away) when the block ends; what it received stays readable afterwards."""
    async with GqlConnection(url, protocol=protocol) as connection:
        yield connection.subscribe(query, variables, field=field)


def _root_fields(request: GraphQLRequest) -> list[str]:
    """The names of the operation's top-level fields."""
    return [
        selection.name.value
        for definition in request.document.definitions
        if isinstance(definition, OperationDefinitionNode)
        for selection in definition.selection_set.selections
        if isinstance(selection, FieldNode)
    ]


async def assert_delivers(
    subscriber: Subscriber, expected: list[int], *, live: bool = False, timeout: float = 15.0
) -> None:
    """Wait until `subscriber` has the last of the price ids `expected`, then check it received
    exactly `expected`, in order; with `live` (a subscription without `after`, which starts
    with whatever is committed once it listens) exactly `expected` from its first price on."""
    if not expected:
        raise ValueError("nothing expected: the test ingested nothing")
    last = expected[-1]
    await subscriber.wait_until(
        lambda: bool(subscriber.results) and subscriber.ids()[-1] >= last,
        timeout=timeout,
        what=f"price {last}",
    )
    received = subscriber.ids()
    start = 0
    if live:
        assert received[0] in expected, f"{received[0]} is not one of the prices {expected}"
        start = expected.index(received[0])
    missing = sorted(set(expected[start:]) - set(received))
    assert received == expected[start:], (
        f"received {received}\nexpected {expected[start:]}\nmissing {missing}"
    )
