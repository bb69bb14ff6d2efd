"""HTTP caching of /graphql: ETag and Cache-Control on successful GETs, 304 on a match,
no-store on everything else."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
from starlette.types import Receive, Scope, Send

from server.httpcache import HttpCacheMiddleware
from server.settings import Settings
from tests.support.asgi import running_app

KEY = "kasparro-httpcache-key"
TYPENAME = {"query": "{ __typename }"}


def body(data: str, request_id: str = "r1", latency: float = 1.5) -> bytes:
    meta = f'{{"requestId":"{request_id}","latencyMs":{latency}}}'
    return f'{{"data":{data},"extensions":{meta}}}'.encode()


def answering(
    bodies: list[bytes],
    *,
    status: int = 200,
    content_type: str = "application/json",
    parts: int = 1,
) -> HttpCacheMiddleware:
    """The middleware in front of an app that answers each request with the next body."""
    queue: Iterator[bytes] = iter(bodies)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        content = next(queue)
        headers = [
            (b"content-type", content_type.encode()),
            (b"content-length", b"%d" % len(content)),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        size = -(-len(content) // parts)
        for index in range(parts):
            chunk = content[index * size : (index + 1) * size]
            await send(
                {"type": "http.response.body", "body": chunk, "more_body": index < parts - 1}
            )

    return HttpCacheMiddleware(app, max_age=1)


def client(app: HttpCacheMiddleware) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


async def test_a_successful_get_is_cacheable_with_an_etag_of_its_data() -> None:
    bodies = [body('{"a":1}', "r1", 1.5), body('{"a":1}', "r2", 0.7), body('{"a":2}', "r3")]
    async with client(answering(bodies)) as http:
        first, second, changed = [await http.get("/graphql") for _ in range(3)]
    assert first.status_code == 200
    assert first.content == bodies[0]
    assert first.headers["cache-control"] == "public, max-age=1"
    assert first.headers["vary"] == "Accept"
    assert first.headers["etag"].startswith('"')
    assert second.headers["etag"] == first.headers["etag"]  # only requestId/latency differ
    assert changed.headers["etag"] != first.headers["etag"]


async def test_a_matching_if_none_match_gets_304_without_a_body() -> None:
    async with client(answering([body('{"a":1}')] * 5, parts=3)) as http:
        etag = (await http.get("/graphql")).headers["etag"]
        matches = [f"W/{etag}", f'"other", {etag}', "*", etag]
        answers = [await http.get("/graphql", headers={"If-None-Match": m}) for m in matches]
    for answer in answers:
        assert answer.status_code == 304
        assert answer.content == b""
        assert answer.headers["etag"] == etag
        assert answer.headers["cache-control"] == "public, max-age=1"
        assert "content-type" not in answer.headers


async def test_a_stale_if_none_match_gets_the_full_response() -> None:
    async with client(answering([body('{"a":2}')])) as http:
        response = await http.get("/graphql", headers={"If-None-Match": '"stale"'})
    assert response.status_code == 200
    assert response.content == body('{"a":2}')


async def test_errors_and_posts_are_not_stored() -> None:
    failed = b'{"data":null,"errors":[{"message":"no"}],"extensions":{"requestId":"r1"}}'
    async with client(answering([failed])) as http:
        error = await http.get("/graphql")
    async with client(
        answering(
            [b"mutations are not allowed when using GET"], status=400, content_type="text/plain"
        )
    ) as http:
        refused = await http.get("/graphql")
    async with client(answering([body('{"a":1}')])) as http:
        posted = await http.post("/graphql", json=TYPENAME)
    for response in (error, refused, posted):
        assert response.headers["cache-control"] == "no-store"
        assert "etag" not in response.headers
    assert error.content == failed


async def test_a_data_key_named_extensions_or_errors_is_not_mistaken_for_the_envelope() -> None:
    nested = [b'{"data":{"x":{"extensions":{"k":%d}}}}' % k for k in (1, 2)]
    aliased = b'{"data":{"errors":[]},"extensions":{"requestId":"r1"}}'
    async with client(answering([*nested, aliased])) as http:
        one, two, errors_alias = [await http.get("/graphql") for _ in range(3)]
    assert one.headers["etag"] != two.headers["etag"]
    assert errors_alias.headers["cache-control"] == "no-store"  # uncacheable, never wrong


async def test_pages_keep_their_own_headers() -> None:
    async with client(answering([b"<html></html>"], content_type="text/html")) as http:
        page = await http.get("/graphql")
    assert "cache-control" not in page.headers
    assert "etag" not in page.headers


def test_max_age_zero_asks_for_revalidation_and_read_keys_make_it_private() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError

    assert HttpCacheMiddleware(app, max_age=0).cache_control == "public, no-cache"
    assert HttpCacheMiddleware(app, max_age=5, private=True).cache_control == "private, max-age=5"


# ---- through the app --------------------------------------------------------------------------


def settings_for(database_url: str, **env: str) -> Settings:
    return Settings.load(_env_file=None, DATABASE_URL=database_url, **env)


async def test_the_app_answers_a_repeated_get_with_304(sqlite_url: str) -> None:
    async with running_app(settings_for(sqlite_url)) as (_, http):
        first = await http.get("/graphql", params=TYPENAME)
        again = await http.get(
            "/graphql", params=TYPENAME, headers={"If-None-Match": first.headers["etag"]}
        )
        posted = await http.post("/graphql", json=TYPENAME)
        invalid = await http.get("/graphql", params={"query": "{ nope }"})
    assert first.status_code == 200
    assert first.json()["data"] == {"__typename": "Query"}
    assert first.headers["cache-control"] == "public, max-age=1"
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == first.headers["etag"]
    assert again.headers["x-request-id"]
    assert posted.headers["cache-control"] == "no-store"
    assert invalid.headers["cache-control"] == "no-store"


async def test_the_app_makes_responses_private_when_reads_need_a_key(sqlite_url: str) -> None:
    settings = settings_for(
        sqlite_url,
        KASPARRO_REQUIRE_READ_KEY="true",
        KASPARRO_API_KEYS=KEY,
        KASPARRO_HTTP_CACHE_MAX_AGE="30",
    )
    async with running_app(settings) as (_, http):
        response = await http.get("/graphql", params=TYPENAME, headers={"X-API-Key": KEY})
    assert response.status_code == 200
    assert response.headers["cache-control"] == "private, max-age=30"
