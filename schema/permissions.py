"""Who may run an operation: strawberry permission classes of the schema's fields."""

from __future__ import annotations

from typing import Any

from strawberry.permission import BasePermission
from strawberry.types import Info

from server.apikeys import is_valid_key, presented_key
from server.errors import Unauthenticated


class HasApiKey(BasePermission):
    """The request carries a valid API key; otherwise the error has code UNAUTHENTICATED."""

    message = (
        "this operation needs an API key: send `Authorization: Bearer <key>` "
        "or `X-API-Key: <key>` with a key from KASPARRO_API_KEYS"
    )

    def has_permission(self, source: Any, info: Info[Any, Any], **kwargs: Any) -> bool:
        context = info.context
        key = getattr(context, "api_key", None) or presented_key(context.request.headers)
        return is_valid_key(context.settings, key)

    def on_unauthorized(self) -> None:
        raise Unauthenticated(self.message)
