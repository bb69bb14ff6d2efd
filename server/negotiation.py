"""GraphQL over HTTP as the GraphQL-over-HTTP specification says: the response's media type,
its status code, and the parameters of a request.

Media types (the `Accept` header, with its q-values):
- `application/graphql-response+json` when the client accepts it (and prefers it to
  `application/json`). A request error (no `data`: the document did not parse or validate, the
  variables did not coerce, the operation could not be chosen, the request was refused) is a
  4xx (400 unless the error says otherwise) and its body has no `data` entry; a result that
  executed is a 200, partial or not.
- `application/json` when the client asks for it, accepts anything (`*/*`, `application/*`) or
  sends no `Accept`: the legacy behaviour, every GraphQL error with status 200 (a request that
  is not a well-formed GraphQL-over-HTTP request is still a 400).
- neither: 406 Not Acceptable.

The request's parameters (a JSON body, or a GET's query string) are checked here once, for both
the compiled path (server/compiled.py) and Strawberry's executor (server/app.py), so a
malformed request gets the same JSON error (code BAD_REQUEST, 400) whichever would have
answered.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

GRAPHQL_RESPONSE_JSON = "application/graphql-response+json"
JSON = "application/json"
# What a 406 says this endpoint can answer.
ACCEPTABLE = f"{GRAPHQL_RESPONSE_JSON}, {JSON}"

BAD_REQUEST = "BAD_REQUEST"
NOT_ACCEPTABLE = "NOT_ACCEPTABLE"
UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
NOT_FOUND = "NOT_FOUND"
INTERNAL_SERVER_ERROR = "INTERNAL_SERVER_ERROR"

# The status of a request error under application/graphql-response+json, by extensions.code;
# any other code is a 400.
_REQUEST_ERROR_STATUS = {
    "UNAUTHENTICATED": 401,
    "FORBIDDEN": 403,
    "QUERY_TOO_LARGE": 413,
    "RATE_LIMITED": 429,
    INTERNAL_SERVER_ERROR: 500,
    "SERVICE_UNAVAILABLE": 503,
}
# The code of an HTTP-level refusal by its status (Strawberry's HTTPException has no code).
_CODE_OF_STATUS = {
    400: BAD_REQUEST,
    404: NOT_FOUND,
    405: METHOD_NOT_ALLOWED,
    406: NOT_ACCEPTABLE,
    415: UNSUPPORTED_MEDIA_TYPE,
}
# The parameters of a GraphQL-over-HTTP request (other names are left alone).
PARAMETERS = ("query", "operationName", "variables", "extensions")


@dataclass(frozen=True, slots=True)
class _Range:
    type: str
    subtype: str
    q: float
    position: int

    def matches(self, media_type: str) -> bool:
        kind, _, subtype = media_type.partition("/")
        return self.type in ("*", kind) and self.subtype in ("*", subtype)

    @property
    def specificity(self) -> int:
        return (self.type != "*") + (self.subtype != "*")


def _ranges(accept: str) -> list[_Range]:
    """The media ranges of an Accept header; a range with a charset other than UTF-8 is left
    out (a response is always UTF-8), malformed ones too."""
    ranges = []
    for position, part in enumerate(accept.split(",")):
        media, *params = (piece.strip() for piece in part.split(";"))
        kind, slash, subtype = media.lower().partition("/")
        if not slash or not kind or not subtype:
            continue
        q = 1.0
        usable = True
        for param in params:
            name, _, value = param.partition("=")
            name, value = name.strip().lower(), value.strip().strip('"').lower()
            if name == "q":
                try:
                    q = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    usable = False
            elif name == "charset" and value not in ("utf-8", "utf8"):
                usable = False
        if usable:
            ranges.append(_Range(kind, subtype, q, position))
    return ranges


def response_media_type(accept: str | None) -> str | None:
    """The media type of a (non-streamed) GraphQL response for a request's Accept header:
    application/json without one; None when neither JSON type is acceptable.

    Each type takes the q-value of the most specific range that matches it; the higher q wins,
    then the more specific range, then the one listed first, then application/json (so `*/*`
    alone is application/json, as for clients written before the specification)."""
    if accept is None or not accept.strip():
        return JSON
    ranges = _ranges(accept)
    best: tuple[float, int, int, int] | None = None
    chosen = None
    for preference, media_type in enumerate((JSON, GRAPHQL_RESPONSE_JSON)):
        matching = [r for r in ranges if r.matches(media_type)]
        if not matching:
            continue
        most_specific = max(matching, key=lambda r: (r.specificity, -r.position))
        if most_specific.q <= 0:
            continue
        rank = (most_specific.q, most_specific.specificity, -most_specific.position, -preference)
        if best is None or rank > best:
            best, chosen = rank, media_type
    return chosen


def shape_result(body: dict[str, Any], media_type: str) -> tuple[dict[str, Any], int]:
    """A GraphQL response's body and status for `media_type`.

    application/json: as it is, 200. application/graphql-response+json: a request error (data
    null, and no error located in the result, i.e. raised before execution) loses its `data`
    entry and gets a 4xx (see _REQUEST_ERROR_STATUS); anything executed is a 200."""
    if media_type != GRAPHQL_RESPONSE_JSON:
        return body, 200
    errors = body.get("errors")
    if body.get("data") is not None or not errors:
        return body, 200
    if any(isinstance(error, Mapping) and error.get("path") for error in errors):
        return body, 200  # a field error that nulled the whole result: a partial response
    return {key: value for key, value in body.items() if key != "data"}, request_error_status(
        errors
    )


def request_error_status(errors: Iterable[Any]) -> int:
    """The 4xx/5xx of a request error under application/graphql-response+json: by the first
    error's code, 400 by default."""
    for error in errors:
        extensions = error.get("extensions") if isinstance(error, Mapping) else None
        code = extensions.get("code") if isinstance(extensions, Mapping) else None
        return _REQUEST_ERROR_STATUS.get(code, 400) if isinstance(code, str) else 400
    return 400


def code_of_status(status: int) -> str:
    """The extensions.code of an HTTP-level refusal."""
    return _CODE_OF_STATUS.get(status, BAD_REQUEST if status < 500 else INTERNAL_SERVER_ERROR)


class GraphQLErrorResponse(JSONResponse):
    """A GraphQL-shaped error (`{"data": null, "errors": [...], "extensions": ...}`) whose media
    type, body and status follow the Accept header of the request it answers, when it answers
    it: application/json as given; application/graphql-response+json without `data`, and with
    `strict_status` (or, for a status below 400, 400), since that type has no 2xx without data.
    A request that accepts neither gets application/json (the refusal matters more than the
    media type)."""

    def __init__(
        self,
        content: dict[str, Any],
        status_code: int,
        headers: Mapping[str, str] | None = None,
        *,
        strict_status: int | None = None,
    ) -> None:
        self.content = content
        self.strict_status = strict_status
        super().__init__(content, status_code=status_code, headers=headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.negotiate(Headers(scope=scope).get("accept"))
        await super().__call__(scope, receive, send)

    def negotiate(self, accept: str | None) -> None:
        """Re-render for the media type `accept` asks for (once; later calls change nothing)."""
        if response_media_type(accept) != GRAPHQL_RESPONSE_JSON:
            return
        content = {key: value for key, value in self.content.items() if key != "data"}
        status = self.strict_status or (self.status_code if self.status_code >= 400 else 400)
        self.body = self.render(content)
        self.status_code = status
        headers = MutableHeaders(raw=self.raw_headers)
        headers["content-type"] = GRAPHQL_RESPONSE_JSON
        headers["content-length"] = str(len(self.body))


class RequestError(Exception):
    """A request that is not a well-formed GraphQL-over-HTTP request (or may not be served as
    asked): answered with `status` and a GraphQL error with `code`."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code or code_of_status(status)
        self.headers = dict(headers or {})


@dataclass(frozen=True, slots=True)
class GraphQLParams:
    """The parameters of one GraphQL-over-HTTP request, checked."""

    query: str | None
    variables: dict[str, Any] | None
    operation_name: str | None
    extensions: dict[str, Any] | None


def params_from_body(body: bytes, content_type: str | None) -> GraphQLParams:
    """The parameters of a POST: a UTF-8 JSON object (`Content-Type: application/json`)."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != JSON:
        raise RequestError(
            f"a POST to /graphql needs `Content-Type: {JSON}` (got {media_type or 'none'!r})",
            415,
        )
    if not body.strip():
        raise RequestError("the request body is empty: send a JSON object with a `query`")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"the request body is not valid UTF-8 JSON: {exc}") from None
    if isinstance(data, list):
        raise RequestError("batched requests (a JSON array) are not supported: send one object")
    if not isinstance(data, dict):
        raise RequestError(
            f"the request body must be a JSON object with a `query`, not {_json_kind(data)}"
        )
    return _checked(data)


def params_from_query_string(pairs: Iterable[tuple[str, str]]) -> GraphQLParams:
    """The parameters of a GET (the query string's name/value pairs, decoded): `variables` and
    `extensions` are JSON; each parameter at most once."""
    data: dict[str, Any] = {}
    for name, value in pairs:
        if name not in PARAMETERS:
            continue
        if name in data:
            raise RequestError(f"the parameter `{name}` is given more than once")
        data[name] = value
    for name in ("variables", "extensions"):
        text = data.get(name)
        if text is None:
            continue
        if text == "":
            data[name] = None
            continue
        try:
            data[name] = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise RequestError(f"the `{name}` parameter is not valid JSON: {exc}") from None
    return _checked(data)


def _checked(data: dict[str, Any]) -> GraphQLParams:
    query = data.get("query")
    if query is not None and not isinstance(query, str):
        raise RequestError(f"`query` must be a string, not {_json_kind(query)}")
    name = data.get("operationName")
    if name is not None and not isinstance(name, str):
        raise RequestError(f"`operationName` must be a string, not {_json_kind(name)}")
    for key in ("variables", "extensions"):
        value = data.get(key)
        if value is not None and not isinstance(value, dict):
            raise RequestError(f"`{key}` must be an object, not {_json_kind(value)}")
    return GraphQLParams(query or None, data.get("variables"), name, data.get("extensions"))


def require_query(params: GraphQLParams) -> str:
    """The document of a request that must carry one (after persisted queries were resolved)."""
    if params.query is None:
        raise RequestError("the request has no `query`: send the GraphQL document to run")
    return params.query


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
