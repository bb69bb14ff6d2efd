"""A fake CoinGecko + CoinPaprika on a real socket, for tests and local runs.

    with FakeUpstream() as fake:
        fake.coins = market_coins(600)      # /coins/markets pages through this list
        fake.inject(Route.MARKETS, Fault.throttle(1), Fault.server_error(503))
        source = CoinGeckoSource(base_url=fake.coingecko_url, ...)
        ...
        assert fake.pages_requested() == [1, 2, 3]

The server is uvicorn in a background thread, so sync tests, async tests (any event loop) and
subprocesses can all call it. Faults are queued per route and each is used by one request (the
first whose query matches `when`). Every request is recorded with its query and headers.
`python -m tests.support.fake_upstream` serves the default payloads until interrupted.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import copy
import json
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as StarletteRoute

from tests.support import upstream_data as data

Transform = Callable[[Any], Any]


class Route(StrEnum):
    MARKETS = "coingecko.markets"
    CHART = "coingecko.market_chart_range"
    TICKERS = "coinpaprika.tickers"


@dataclass(frozen=True)
class Fault:
    """One misbehaviour for one request. `body` replaces the answer; `transform` edits the normal
    payload (for /coins/markets the whole coin list, before paging); `delay` comes first."""

    status: int | None = None
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    transform: Transform | None = None

    @classmethod
    def throttle(cls, retry_after: float | str | None = 1, body: object = None) -> Fault:
        """429 with `Retry-After` (seconds, an HTTP-date string, or None for no header)."""
        headers = {} if retry_after is None else {"Retry-After": _header_value(retry_after)}
        return cls(429, _json_bytes(body or data.CG_RATE_LIMIT_BODY), headers)

    @classmethod
    def server_error(cls, status: int = 500) -> Fault:
        """A 5xx with a short HTML body, as proxies send."""
        return cls(status, f"<html><body>{status} Server Error</body></html>".encode())

    @classmethod
    def error(cls, status: int, body: object, headers: Mapping[str, str] | None = None) -> Fault:
        """Any status with a vendor error body (a dict is sent as JSON, str/bytes as they are)."""
        return cls(status, _json_bytes(body), dict(headers or {}))

    @classmethod
    def payload(cls, body: object, status: int = 200) -> Fault:
        """Answer with this JSON instead of the normal payload (e.g. a non-price payload)."""
        return cls(status, _json_bytes(body))

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        """The normal answer after `seconds`."""
        return cls(delay=seconds)

    @classmethod
    def malformed(cls, text: str = '[{"id": "bitcoin", "current_price": 6') -> Fault:
        """200 with a body that is not JSON."""
        return cls(200, text.encode())

    @classmethod
    def rename(cls, old: str, new: str) -> Fault:
        """Every item's field `old` (a dotted path) is called `new` instead."""
        return cls(transform=_each(lambda item: _rename(item, old, new)))

    @classmethod
    def values(cls, value: object, *paths: str) -> Fault:
        """Every item's `paths` (dotted) set to `value`: None for nulls, "" for blanks."""
        return cls(transform=_each(lambda item: _set(item, paths, lambda _old: value)))

    @classmethod
    def nulls(cls, *paths: str) -> Fault:
        """Every item's `paths` (dotted) set to null."""
        return cls.values(None, *paths)

    @classmethod
    def blanks(cls, *paths: str) -> Fault:
        """Every item's `paths` (dotted) set to an empty string."""
        return cls.values("", *paths)

    @classmethod
    def as_strings(cls, *paths: str) -> Fault:
        """Every item's `paths` (dotted) turned into strings, as old mocks sent numbers."""
        return cls(transform=_each(lambda item: _set(item, paths, str)))

    @classmethod
    def edit(cls, transform: Transform) -> Fault:
        """Any other change of the normal payload."""
        return cls(transform=transform)

    @classmethod
    def shift(cls, count: int) -> Fault:
        """The ranking moved: the last `count` coins are now on top, so pages shift by `count`."""
        return cls(transform=lambda coins: coins[-count:] + coins[:-count])


@dataclass(frozen=True)
class RecordedRequest:
    route: str | None
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    url: str


@dataclass
class _Pending:
    fault: Fault
    when: dict[str, str]


def _header_value(value: float | str) -> str:
    return value if isinstance(value, str) else f"{value:g}"


def _json_bytes(body: object) -> bytes:
    if isinstance(body, bytes):
        return body
    return body.encode() if isinstance(body, str) else json.dumps(body).encode()


def _each(change: Callable[[dict[str, Any]], None]) -> Transform:
    def apply(payload: Any) -> Any:
        for item in payload if isinstance(payload, list) else [payload]:
            if isinstance(item, dict):
                change(item)
        return payload

    return apply


def _parent(item: dict[str, Any], path: str) -> tuple[dict[str, Any] | None, str]:
    *parents, leaf = path.split(".")
    node: Any = item
    for key in parents:
        node = node.get(key) if isinstance(node, dict) else None
    return (node if isinstance(node, dict) else None), leaf


def _rename(item: dict[str, Any], old: str, new: str) -> None:
    node, leaf = _parent(item, old)
    if node is not None and leaf in node:
        node[new.rsplit(".", 1)[-1]] = node.pop(leaf)


def _set(item: dict[str, Any], paths: tuple[str, ...], value: Callable[[Any], Any]) -> None:
    for path in paths:
        node, leaf = _parent(item, path)
        if node is not None and leaf in node:
            node[leaf] = value(node[leaf])


class FakeUpstream:
    """Both vendors under one server: `coingecko_url` and `coinpaprika_url` are the API roots."""

    def __init__(self, port: int = 0) -> None:
        self._lock = threading.Lock()
        self._faults: dict[str, list[_Pending]] = {}
        self._requests: list[RecordedRequest] = []
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = port  # 0: any free port, known once started
        self.reset()

    @classmethod
    def shared(cls) -> FakeUpstream:
        """One server per test process, reset: a cheap per-test fixture body."""
        global _SHARED
        if _SHARED is None:
            _SHARED = cls().start()
            atexit.register(_SHARED.stop)
        _SHARED.reset()
        return _SHARED

    # ---- the test-facing API ----

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def coingecko_url(self) -> str:
        return f"{self.url}/coingecko/api/v3"

    @property
    def coinpaprika_url(self) -> str:
        return f"{self.url}/coinpaprika/v1"

    def inject(self, route: Route, *faults: Fault, when: Mapping[str, str] | None = None) -> None:
        """Queue `faults` for `route`, used in order, one per request whose query has `when`."""
        with self._lock:
            queue = self._faults.setdefault(route, [])
            queue.extend(_Pending(fault, dict(when or {})) for fault in faults)

    def pending_faults(self, route: Route) -> int:
        """How many injected faults `route` has not used yet."""
        with self._lock:
            return len(self._faults.get(route, []))

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_for(self, route: Route) -> list[RecordedRequest]:
        """The recorded requests of one route, oldest first."""
        return [r for r in self.requests if r.route == route]

    def pages_requested(self) -> list[int]:
        """The `page` of every /coins/markets request, in order (retries included)."""
        return [int(r.query.get("page", "1")) for r in self.requests_for(Route.MARKETS)]

    def reset(self) -> None:
        """Back to the default payloads; forget recorded requests and unused faults."""
        with self._lock:
            self.coins: list[dict[str, Any]] = data.market_coins(3)
            self.tickers: list[dict[str, Any]] = data.tickers(3)
            self.history_limit_days: int | None = 365  # older `from` → 401 with error 10012
            self.clock: Callable[[], float] = time.time
            self._faults.clear()
            self._requests.clear()

    # ---- lifecycle ----

    def start(self) -> FakeUpstream:
        """Serve on a free port of 127.0.0.1 in a daemon thread; returns when it accepts."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app(),
            log_level="warning",
            access_log=False,
            lifespan="off",
            http="h11",
            ws="none",
            loop="asyncio",
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="fake-upstream"
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake upstream did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop the server and wait for its thread."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ---- the server ----

    def app(self) -> Starlette:
        routes = [
            StarletteRoute("/coingecko/api/v3/coins/markets", self._markets),
            StarletteRoute("/coingecko/api/v3/coins/{coin_id}/market_chart/range", self._chart),
            StarletteRoute("/coinpaprika/v1/tickers", self._tickers),
        ]
        return Starlette(routes=routes)

    def _record(self, request: Request, route: Route) -> Fault | None:
        query = dict(request.query_params)
        with self._lock:
            self._requests.append(
                RecordedRequest(
                    route=route,
                    method=request.method,
                    path=request.url.path,
                    query=query,
                    headers={k.lower(): v for k, v in request.headers.items()},
                    url=str(request.url),
                )
            )
            queue = self._faults.get(route, [])
            for index, pending in enumerate(queue):
                if all(query.get(k) == v for k, v in pending.when.items()):
                    return queue.pop(index).fault
        return None

    async def _respond(
        self, request: Request, route: Route, normal: Callable[[Transform | None], Response]
    ) -> Response:
        fault = self._record(request, route)
        if fault is None:
            return normal(None)
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.body is not None:
            return Response(
                fault.body,
                status_code=fault.status or 200,
                headers=dict(fault.headers),
                media_type="application/json",
            )
        response = normal(fault.transform)
        if fault.status is not None:
            response.status_code = fault.status
        return response

    async def _markets(self, request: Request) -> Response:
        def normal(transform: Transform | None) -> Response:
            query = request.query_params
            if "vs_currency" not in query:
                return _json({"error": "Missing parameter vs_currency"}, 400)
            per_page = min(max(int(query.get("per_page", "100")), 1), 250)
            page = max(int(query.get("page", "1")), 1)
            coins = copy.deepcopy(self.coins)
            if transform is not None:
                coins = transform(coins)
            return _json(coins[(page - 1) * per_page : page * per_page])

        return await self._respond(request, Route.MARKETS, normal)

    async def _chart(self, request: Request) -> Response:
        def normal(transform: Transform | None) -> Response:
            coin_id = request.path_params["coin_id"]
            if coin_id not in {coin.get("id") for coin in self.coins}:
                return _json(data.CG_NOT_FOUND_BODY, 404)
            try:
                low, high = int(request.query_params["from"]), int(request.query_params["to"])
            except (KeyError, ValueError):
                return _json({"error": "from and to must be unix seconds"}, 400)
            limit = self.history_limit_days
            if limit is not None and low < self.clock() - limit * 86_400:
                return _json(data.CG_TIME_RANGE_BODY, 401)
            payload = data.chart_payload(low, high)
            return _json(transform(payload) if transform else payload)

        return await self._respond(request, Route.CHART, normal)

    async def _tickers(self, request: Request) -> Response:
        def normal(transform: Transform | None) -> Response:
            wanted = set(request.query_params.get("quotes", "USD").upper().split(","))
            items = copy.deepcopy(self.tickers)
            for item in items:
                quotes = item.get("quotes")
                if isinstance(quotes, dict):
                    item["quotes"] = {k: v for k, v in quotes.items() if k in wanted}
            return _json(transform(items) if transform else items)

        return await self._respond(request, Route.TICKERS, normal)


_SHARED: FakeUpstream | None = None


def _json(payload: object, status: int = 200) -> Response:
    return Response(json.dumps(payload), status_code=status, media_type="application/json")


def main() -> None:  # pragma: no cover - manual use
    """Serve the default payloads (on the port given as argument) until Ctrl-C."""
    with FakeUpstream(int(sys.argv[1]) if len(sys.argv) > 1 else 0) as fake:
        fake.coins = data.market_coins(300)
        fake.tickers = data.tickers(300)
        print(f"COINGECKO_BASE_URL={fake.coingecko_url}")
        print(f"COINPAPRIKA_BASE_URL={fake.coinpaprika_url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":  # pragma: no cover
    main()
