"""GraphQL types of the assets domain."""

from __future__ import annotations

from typing import Any

import strawberry


@strawberry.type(description="A canonical coin: one asset whatever source named it.")
class Asset:
    id: strawberry.ID
    symbol: str
    name: str
    slug: str

    @classmethod
    def from_row(cls, row: Any) -> Asset:
        return cls(id=strawberry.ID(str(row.id)), symbol=row.symbol, name=row.name, slug=row.slug)
