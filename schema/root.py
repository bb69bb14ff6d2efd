"""The schema root: merges each domain's Query (and later Mutation/Subscription) classes."""

from __future__ import annotations

import strawberry
from graphql import GraphQLError
from strawberry.types import ExecutionContext
from strawberry.schema.config import StrawberryConfig
from strawberry.tools import merge_types

from schema.extensions import ErrorPolicy, ResponseMeta
from schema.prices.query import PricesQuery
from schema.scalars import SCALAR_MAP
from schema.system.query import SystemQuery

Query = merge_types("Query", (PricesQuery, SystemQuery))


class Schema(strawberry.Schema):
    """Errors are classified and logged by ErrorPolicy; the default logs every client mistake
    with a stack trace."""

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        return None


def build_schema() -> strawberry.Schema:
    """A fresh schema; extensions are passed as classes so no request state is shared."""
    return Schema(
        query=Query,
        extensions=[ErrorPolicy, ResponseMeta],
        config=StrawberryConfig(scalar_map=SCALAR_MAP),
    )


def sdl() -> str:
    """The schema in SDL, as committed in schema.graphql."""
    return build_schema().as_str() + "\n"
