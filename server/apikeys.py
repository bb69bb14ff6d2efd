"""API keys: the key a client presents, and whether it is one of KASPARRO_API_KEYS.

Part of the core: the schema asks it (mutations need a key; operators see the server's insides,
schema.disclosure) and so do the transports above it (server.auth, server.ratelimit,
server.live). A key comes in `Authorization: Bearer <key>` or `X-API-Key: <key>` and is checked
in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from server.settings import Settings


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key the client sent, if any (Bearer token first, then X-API-Key)."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    key = headers.get("x-api-key", "").strip()
    return key or None


def is_valid_key(settings: Settings, key: str | None) -> bool:
    """Whether `key` is one of KASPARRO_API_KEYS; every key is compared, in constant time."""
    if not key:
        return False
    # Digests have one length, so the comparison time says nothing about the keys' lengths.
    given = hashlib.sha256(key.encode()).digest()
    matched = False
    for allowed in settings.api_keys:
        expected = hashlib.sha256(allowed.get_secret_value().encode()).digest()
        matched |= hmac.compare_digest(given, expected)
    return matched
