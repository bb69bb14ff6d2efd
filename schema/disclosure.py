"""What the API shows of the server's insides: in full to operators, redacted for everyone else.

Some stored values describe the server rather than the data: a CSV file's absolute path (in a
price's or a quarantined row's origin, a checkpoint's stream and state, a run's checkpoints and
drift details) and a failed run's error (exception class names, a database's message). An
operator, a request carrying a valid API key (server.apikeys), sees them as stored. Anyone else
sees a file by its base name (`/srv/data/BTC-USD.csv:17` -> `BTC-USD.csv:17`) and a run's error
as a stable code (`RunErrorCode`) with a fixed message that names no class, path or statement.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from server.apikeys import is_valid_key, presented_key
from server.source_names import FAMILIES, family_of

# Where a request's answer is kept on its ASGI scope: the key is checked once per request.
_SCOPE_KEY = "kasparro.operator"


def is_operator(context: Any) -> bool:
    """Whether the request (or WebSocket connection) of `context` carries a valid API key."""
    request = context.request
    scope = request.scope
    cached = scope.get(_SCOPE_KEY)
    key = getattr(context, "api_key", None) or presented_key(request.headers)
    if cached is not None and cached[0] == key:
        return bool(cached[1])
    operator = is_valid_key(context.settings, key)
    scope[_SCOPE_KEY] = (key, operator)
    return operator


# ---- file paths ----

# An origin that names an upstream request ("GET /coins/markets?page=2") holds no local path.
_REQUEST = re.compile(r"^[A-Z]+ /")
# The directories of a path: from the start of the text or of a word, up to its last separator.
_DIRECTORIES = re.compile(r"(?:(?<=\s)|^)(?:[^\s\\/]*[\\/])+")
# The same, for a path that is absolute (free text: "01/02/2024" is a date, not a path).
_ABSOLUTE_DIRECTORIES = re.compile(r"(?:(?<=\s)|^)(?:~|[A-Za-z]:)?[\\/](?:[^\s\\/]*[\\/])*")


def public_location(text: str) -> str:
    """A file location without its directories (`/data/BTC-USD.csv:17` -> `BTC-USD.csv:17`,
    `csv:yahoo /data/x.csv` -> `csv:yahoo x.csv`); an upstream request as it is."""
    if not text or _REQUEST.match(text):
        return text
    return _DIRECTORIES.sub("", text)


def public_text(text: str) -> str:
    """Free text with every absolute path cut to its base name."""
    if _REQUEST.match(text):
        return text
    return _ABSOLUTE_DIRECTORIES.sub("", text)


# Keys whose text values are file locations, relative ones included.
_LOCATION_KEYS = frozenset({"origin", "path", "file", "stream"})


def public_json(value: Any, key: str | None = None) -> Any:
    """JSON (a checkpoint, a run's checkpoints or details, a drift's detail) with every absolute
    path, in keys and in text, and every location under a key like `path`, cut to its base
    name."""
    if isinstance(value, Mapping):
        return {public_text(str(k)): public_json(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [public_json(item, key) for item in value]
    if isinstance(value, str):
        return public_location(value) if key in _LOCATION_KEYS else public_text(value)
    return value


# ---- run errors ----

UPSTREAM_ERROR = "UPSTREAM_ERROR"
BAD_DATA = "BAD_DATA"
DATABASE_UNAVAILABLE = "DATABASE_UNAVAILABLE"
SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
INTERRUPTED = "INTERRUPTED"
INTERNAL_ERROR = "INTERNAL_ERROR"

RUN_ERROR_MESSAGES = {
    UPSTREAM_ERROR: "the source's API failed or answered with an error",
    BAD_DATA: "the source's data could not be read",
    DATABASE_UNAVAILABLE: "the database failed during the run",
    SERVICE_UNAVAILABLE: "a service the run needs (broker or job queue) was unavailable",
    INTERRUPTED: "the run was stopped before it finished (shutdown or a stopped process)",
    INTERNAL_ERROR: "the run failed on an unexpected error",
}
RUN_ERROR_CODES = ", ".join(RUN_ERROR_MESSAGES)

# Error texts are "Class: message" (workers.pipeline.runner.error_text), a driver's class after
# SQLAlchemy's ("OperationalError: ConnectionDoesNotExistError: ..."), or a sentence of ours.
_CLASSES = {
    UPSTREAM_ERROR: (
        "UpstreamError",
        "FatalUpstreamError",
        "MalformedResponseError",
        "RetriableUpstreamError",
        "ThrottledError",
        "TimeRangeExceededError",
        "HTTPError",
        "HTTPStatusError",
        "RequestError",
        "TransportError",
        "TimeoutException",
    ),
    BAD_DATA: (
        "SourceError",
        "RecordError",
        "IdentityError",
        "OverrideError",
        "BadDatasetName",
        "UnknownSourceError",
        "UnicodeDecodeError",
    ),
    DATABASE_UNAVAILABLE: (
        "OperationalError",
        "InterfaceError",
        "DBAPIError",
        "DatabaseError",
        "IntegrityError",
        "DataError",
        "ProgrammingError",
        "InternalError",
        "TimeoutError",
        "ConnectionError",
        "ConnectionRefusedError",
        "ConnectionDoesNotExistError",
        "PostgresError",
        "CannotConnectNowError",
        "TooManyConnectionsError",
    ),
    SERVICE_UNAVAILABLE: ("BrokerUnavailable", "QueueUnavailable", "ConnectionResetError"),
}
_CODE_OF_CLASS = {name: code for code, names in _CLASSES.items() for name in names}
# The causes the pipeline prefixes a run's error with (workers.pipeline.causes).
_CODE_OF_CAUSE = {
    "database unavailable": DATABASE_UNAVAILABLE,
    "Redis unavailable": SERVICE_UNAVAILABLE,
    "upstream": UPSTREAM_ERROR,
    "bad data": BAD_DATA,
}
_OURS = re.compile(r"^(interrupted|cancelled|not started|abandoned)\b", re.IGNORECASE)
_CLASS = re.compile(r"^([A-Za-z_][\w.]*)(?::|$)")


def run_error_code(error: str | None, source: str | None = None) -> str | None:
    """The stable code of a run's stored `error`; None when it has none. A source's own error
    (SourceError) is its upstream's for an API source, its data's for a file source."""
    if not error:
        return None
    if _OURS.match(error):
        return INTERRUPTED
    cause, colon, _ = error.partition(":")
    if colon and cause in _CODE_OF_CAUSE:
        return _CODE_OF_CAUSE[cause]
    match = _CLASS.match(error)
    if match is None:
        return INTERNAL_ERROR
    name = match.group(1).rpartition(".")[2]
    if name == "SourceError" and source is not None and family_of(source) not in FAMILIES:
        return UPSTREAM_ERROR
    code = _CODE_OF_CLASS.get(name)
    if code is None and name.endswith(("UpstreamError", "HTTPError")):
        code = UPSTREAM_ERROR
    if code is None and ("Postgres" in name or name.startswith(("Sqlite", "sqlite3"))):
        code = DATABASE_UNAVAILABLE
    return code or INTERNAL_ERROR


def public_run_error(error: str | None, source: str | None = None) -> str | None:
    """A run's error as everyone but an operator sees it: `CODE: a fixed message`."""
    code = run_error_code(error, source)
    return None if code is None else f"{code}: {RUN_ERROR_MESSAGES[code]}"
