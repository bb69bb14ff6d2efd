"""A priceUpdates subscriber that behaves as a client behind a load balancer should: when its
connection is lost it connects again (to whichever server the balancer picks) and resumes with
`after` set to the cursor of the last price it received.

    subscriber = ResumingSubscriber(haproxy.graphql_ws, after=seed_cursor)
    subscriber.start()
    ...
    subscriber.ids()           # every price received, in arrival order
    subscriber.connections     # the server (SERVED_BY header) of each connection, in order
    await subscriber.close()
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from gql import Client, GraphQLRequest
from gql.transport.exceptions import TransportError, TransportQueryError
from gql.transport.websockets import WebsocketsTransport

from tests.deploy.haproxy import SERVED_BY
from tests.support.statements import eventually
from tests.support.subscribers import PRICE_UPDATES, TRANSPORT_WS

# Between two failed attempts to connect (the balancer had no server for it).
RETRY_PAUSE = 0.05


class ResumingSubscriber:
    def __init__(self, url: str, *, after: str, name: str = "subscriber") -> None:
        self.url = url
        self.name = name
        self.cursor = after
        self.prices: list[dict[str, Any]] = []
        self.connections: list[str] = []  # the server each connection reached, in order
        self.failed_attempts = 0  # connection attempts the balancer could not serve
        self.error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    def ids(self) -> list[int]:
        return [int(price["id"]) for price in self.prices]

    def check(self) -> None:
        """Raise what ended the subscriber, if anything did."""
        if self.error is not None:
            raise AssertionError(f"{self.name} failed: {self.error!r}") from self.error
        if self._task is not None and self._task.done():
            raise AssertionError(f"{self.name} stopped")

    async def wait_until(self, predicate: Any, *, timeout: float, what: str) -> None:
        def done() -> bool:
            self.check()
            return bool(predicate())

        await eventually(done, timeout=timeout, what=f"{what} ({self!r})")

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        try:
            while True:
                await self._connection()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.error = exc

    async def _connection(self) -> None:
        """One connection: subscribe after the cursor, receive until the connection is lost."""
        transport = WebsocketsTransport(url=self.url, subprotocols=[TRANSPORT_WS])
        client = Client(transport=transport)
        try:
            session = await client.connect_async()  # type: ignore[no-untyped-call]
        except (TransportError, OSError):
            self.failed_attempts += 1
            await asyncio.sleep(RETRY_PAUSE)
            return
        try:
            headers = {key.lower(): value for key, value in transport.response_headers.items()}
            self.connections.append(headers.get(SERVED_BY, "?"))
            request = GraphQLRequest(PRICE_UPDATES, variable_values={"after": self.cursor})
            async for data in session.subscribe(request):
                price = data["priceUpdates"]
                self.prices.append(price)
                self.cursor = price["cursor"]
            raise AssertionError("the server completed the subscription")
        except TransportQueryError:
            raise  # the server refused the subscription: no reconnect mends that
        except (TransportError, OSError):
            pass  # the connection is lost: the next one resumes after self.cursor
        finally:
            with contextlib.suppress(Exception):
                await client.close_async()  # type: ignore[no-untyped-call]

    def __repr__(self) -> str:
        return (
            f"<{self.name}: {len(self.prices)} prices, connections {self.connections}, "
            f"{self.failed_attempts} failed attempts>"
        )
