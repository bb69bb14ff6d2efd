"""The schema root: merges each domain's Query (and later Mutation/Subscription) classes."""

from __future__ import annotations

from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.schema.config import StrawberryConfig
from strawberry.tools import merge_types
from strawberry.types import ExecutionContext

from schema.assets.query import AssetsQuery
from schema.documents import CachedDocuments, DocumentCache
from schema.execution import SchemaExecutionContext
from schema.extensions import ErrorPolicy, ResponseMeta
from schema.inputs import check_root_arguments
from schema.limits import DocumentLimits, document_limits
from schema.live.streams import StreamFactory
from schema.metrics import OperationMetrics
from schema.prices.market import MarketQuery
from schema.prices.query import PricesQuery
from schema.prices.subscription import (
    PricesSubscription,
    price_batches_stream,
    price_updates_stream,
)
from schema.quality.query import QualityQuery
from schema.runs.mutation import RunsMutation
from schema.runs.query import RunsQuery
from schema.runs.subscription import RunsSubscription, RunStream
from schema.scalars import SCALAR_MAP
from schema.system.query import SystemQuery
from server.metrics import Metrics
from server.settings import Settings

Query = merge_types(
    "Query", (PricesQuery, MarketQuery, AssetsQuery, SystemQuery, RunsQuery, QualityQuery)
)
Mutation = merge_types("Mutation", (RunsMutation,))
Subscription = merge_types("Subscription", (PricesSubscription, RunsSubscription))
# Every root field's text and ids are bounded before its resolver runs (schema.inputs).
check_root_arguments(Query, Mutation, Subscription)

# The subscription fields the live hub streams (shared execution, fan-out), by GraphQL name.
LIVE_STREAMS: dict[str, StreamFactory] = {
    "priceUpdates": price_updates_stream,
    "priceBatches": price_batches_stream,
    "etlRunEvents": RunStream.of,
}


class Schema(strawberry.Schema):
    """Strawberry's schema with its documents parsed and validated once per text under `limits`
    (`documents`, see schema.documents). Errors are classified and logged by ErrorPolicy; the
    default logs every client mistake with a stack trace."""

    def __init__(self, *args: Any, limits: DocumentLimits | None = None, **kwargs: Any) -> None:
        # A subscription's events keep nothing once executed (schema.execution).
        kwargs.setdefault("execution_context_class", SchemaExecutionContext)
        super().__init__(*args, **kwargs)
        self.documents = DocumentCache(self._schema, limits)

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        return None


def build_schema(settings: Settings | None = None, *, metrics: Metrics | None = None) -> Schema:
    """A fresh schema; extensions are passed as classes or factories so no request state is
    shared. With `settings`, the protection limits they configure are on (the SDL needs none);
    with `metrics`, every operation is counted and timed there."""
    # First: its exit runs last, after ErrorPolicy has given each error its code.
    measured = [OperationMetrics.factory(metrics)] if metrics is not None else []
    return Schema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        extensions=[*measured, ErrorPolicy, ResponseMeta, CachedDocuments],
        config=StrawberryConfig(scalar_map=SCALAR_MAP),
        limits=document_limits(settings) if settings is not None else None,
    )


def sdl() -> str:
    """The schema in SDL, as committed in schema.graphql."""
    return build_schema().as_str() + "\n"
