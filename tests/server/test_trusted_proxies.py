"""Who a client is, on a real server: its TCP peer, unless that peer is one of
KASPARRO_TRUSTED_PROXIES (empty by default); then the right-most address of X-Forwarded-For (or
Forwarded) that is not itself a trusted proxy. The rate limit (HTTP and WebSocket alike) and the
logs use that one identity, so no header lets a client pick a fresh one."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import pytest
import structlog
from starlette.datastructures import Headers
from websockets.asyncio.client import connect

from server.ratelimit import TrustedProxies
from server.settings import Settings, SettingsError
from tests.support.live_server import ServerAddress, serve_uvicorn

HEALTH = {"query": "{ health { database } }"}

Serve = Callable[..., AbstractAsyncContextManager[ServerAddress]]


@pytest.fixture
def serve(migrated_sqlite_url: str) -> Serve:
    """`serve(**env)`: the app under uvicorn as `kasparro serve` runs it, with a budget of two
    requests per client (refilled once a minute, so nothing refills during a test)."""

    def served(**env: str) -> AbstractAsyncContextManager[ServerAddress]:
        settings = Settings.load(
            _env_file=None,
            DATABASE_URL=migrated_sqlite_url,
            KASPARRO_RATE_LIMIT_PER_MINUTE=1,
            KASPARRO_RATE_LIMIT_BURST=2,
            KASPARRO_LOG_LEVEL="warning",
            **env,
        )
        return serve_uvicorn(settings)

    return served


async def statuses(address: ServerAddress, *forwarded: dict[str, str]) -> list[int]:
    """The status of one POST per header set, in turn."""
    async with httpx.AsyncClient(base_url=address.http, timeout=10) as client:
        return [
            (await client.post("/graphql", json=HEALTH, headers=headers)).status_code
            for headers in forwarded
        ]


async def test_without_trusted_proxies_forwarding_headers_choose_no_identity(
    serve: Serve,
) -> None:
    async with serve() as address:
        got = await statuses(
            address,
            {"X-Forwarded-For": "198.51.100.1"},
            {"X-Forwarded-For": "198.51.100.2"},
            {"X-Forwarded-For": "198.51.100.3"},
            {"Forwarded": "for=198.51.100.4"},
            {"X-Real-IP": "198.51.100.5"},
        )
    # One client (the peer, 127.0.0.1) whatever the headers say: its two requests, then 429.
    assert got == [200, 200, 429, 429, 429]


async def test_behind_a_trusted_proxy_the_client_is_the_right_most_untrusted_address(
    serve: Serve,
) -> None:
    async with serve(KASPARRO_TRUSTED_PROXIES="127.0.0.1,10.0.0.0/8") as address:
        first = await statuses(
            address,
            {"X-Forwarded-For": "198.51.100.1"},
            # What a client wrote before the proxy appended its address is ignored.
            {"X-Forwarded-For": "203.0.113.9, 198.51.100.1"},
            {"X-Forwarded-For": "203.0.113.10, 198.51.100.1"},
        )
        others = await statuses(
            address,
            # Through a chain of trusted proxies (10.0.0.0/8) to the same client.
            {"X-Forwarded-For": "198.51.100.2, 10.1.2.3"},
            {"X-Forwarded-For": "198.51.100.2", "X-Forwarded-Proto": "https"},
            {"X-Forwarded-For": "198.51.100.2, 10.9.9.9, 10.1.2.3"},
            # RFC 7239 Forwarded, read when there is no X-Forwarded-For.
            {"Forwarded": 'for="[2001:db8::7]:4711";proto=https'},
            {"Forwarded": 'for=203.0.113.1, for="[2001:db8::7]"'},
            {"Forwarded": "for=2001:db8::7"},
        )
        # The proxy itself, with no forwarding header, is a client like any other.
        proxy = await statuses(address, {}, {}, {})
    assert first == [200, 200, 429]
    assert others == [200, 200, 429, 200, 200, 429]
    assert proxy == [200, 200, 429]


async def test_websocket_operations_and_http_share_the_forwarded_clients_budget(
    serve: Serve,
) -> None:
    forwarded = {"X-Forwarded-For": "198.51.100.7"}
    async with serve(KASPARRO_TRUSTED_PROXIES="127.0.0.1") as address:
        async with connect(
            address.graphql_ws,
            subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
            additional_headers=forwarded,
        ) as ws:  # the upgrade: the first of 198.51.100.7's two requests
            await ws.send(json.dumps({"type": "connection_init"}))
            assert json.loads(await ws.recv())["type"] == "connection_ack"
            await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": HEALTH}))
            assert json.loads(await ws.recv())["type"] == "next"  # the second
            assert json.loads(await ws.recv())["type"] == "complete"
        with structlog.testing.capture_logs() as logs:
            got = await statuses(address, forwarded, {"X-Forwarded-For": "198.51.100.8"})
    assert got == [429, 200]
    [limited] = [entry for entry in logs if entry["event"] == "request rate limited"]
    assert limited["client"] == "addr:198.51.100.7"


@pytest.mark.parametrize(
    ("peer", "headers", "client"),
    [
        ("192.0.2.1", {"x-forwarded-for": "198.51.100.1"}, None),  # an untrusted peer
        ("10.0.0.1", {}, None),
        ("10.0.0.1", {"x-forwarded-for": "198.51.100.1"}, "198.51.100.1"),
        ("10.0.0.1", {"x-forwarded-for": "1.1.1.1, 198.51.100.1"}, "198.51.100.1"),
        ("10.0.0.1", {"x-forwarded-for": "198.51.100.1, 10.0.0.2"}, "198.51.100.1"),
        ("10.0.0.1", {"x-forwarded-for": "10.0.0.3, 10.0.0.2"}, "10.0.0.3"),  # all trusted
        ("10.0.0.1", {"x-forwarded-for": "198.51.100.1:4711"}, "198.51.100.1"),
        ("10.0.0.1", {"x-forwarded-for": "[2001:db8::1]:4711"}, "2001:db8::1"),
        ("10.0.0.1", {"x-forwarded-for": "::ffff:198.51.100.1"}, "198.51.100.1"),
        ("10.0.0.1", {"x-forwarded-for": "unknown"}, None),
        ("10.0.0.1", {"x-forwarded-for": "198.51.100.1, unknown, 10.0.0.2"}, "10.0.0.2"),
        ("10.0.0.1", {"forwarded": 'for="_hidden", for=198.51.100.1;by=10.0.0.1'}, "198.51.100.1"),
        ("10.0.0.1", {"forwarded": "for=198.51.100.1, proto=https"}, None),
        ("::ffff:10.0.0.1", {"x-forwarded-for": "198.51.100.1"}, "198.51.100.1"),
        (
            "10.0.0.1",
            {"x-forwarded-for": "198.51.100.1", "forwarded": "for=203.0.113.1"},
            "198.51.100.1",
        ),
    ],
)
def test_the_client_behind_trusted_proxies(
    peer: str, headers: dict[str, str], client: str | None
) -> None:
    proxies = TrustedProxies(["10.0.0.0/8"])
    assert proxies.client(peer, Headers(headers)) == client


def test_trusted_proxies_must_be_addresses_or_networks() -> None:
    settings: Any = Settings.load(_env_file=None, KASPARRO_TRUSTED_PROXIES=" 10.0.0.0/8, ::1 ")
    assert settings.trusted_proxies == ["10.0.0.0/8", "::1"]
    assert Settings.load(_env_file=None).trusted_proxies == []
    with pytest.raises(SettingsError, match=r"KASPARRO_TRUSTED_PROXIES.*'proxy\.local'"):
        Settings.load(_env_file=None, KASPARRO_TRUSTED_PROXIES="10.0.0.1,proxy.local")
