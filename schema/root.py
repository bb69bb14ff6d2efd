"""The schema root: merges each domain's Query (and later Mutation/Subscription) classes."""

from __future__ import annotations

import strawberry
from strawberry.tools import merge_types

from schema.extensions import ResponseMeta
from schema.system.query import SystemQuery

Query = merge_types("Query", (SystemQuery,))


def build_schema() -> strawberry.Schema:
    """A fresh schema; extensions are passed as classes so no request state is shared."""
    return strawberry.Schema(query=Query, extensions=[ResponseMeta])


def sdl() -> str:
    """The schema in SDL, as committed in schema.graphql."""
    return build_schema().as_str() + "\n"
