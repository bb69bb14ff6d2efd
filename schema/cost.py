"""What an operation costs before it runs: an estimate of the rows it reads and returns.

Each object a field returns counts one row; scalars count nothing. A connection's `edges` and
`nodes` hold a page: `first` or `last` (at most the maximum page size), else the default page
size. Other lists count as the length they usually have (LIST_SIZES). What a list's items select
is multiplied by its length, so nested lists multiply: 15 aliases of
`prices(first: 500) { nodes { asset { latestPrices { asset { ... } } } } }` cost about 100,000.
Fields of one response name are merged as execution merges them, and @skip/@include are read
from the variables, so a selection repeated by fragments counts once.

An operation above KASPARRO_MAX_QUERY_COST is refused before it runs (QUERY_TOO_COSTLY), with
the estimate and the maximum in the error's extensions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from graphql import (
    BooleanValueNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLField,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
    get_named_type,
    get_nullable_type,
)
from graphql.execution.values import VariableValues, get_argument_values

from schema.pagination import DEFAULT_PAGE_SIZE
from schema.prices.candles import Interval
from schema.prices.market import MAX_CANDLE_BUCKETS

QUERY_TOO_COSTLY = "QUERY_TOO_COSTLY"

# Typical lengths of the lists that are not pages. A deployment follows about a thousand coins
# (CoinGecko's first four pages of 250), each priced by a handful of sources (the aggregators,
# CSV datasets and exchanges); quarantine reasons come in 16 kinds.
MARKET_SIZE = 1000
SOURCES_PER_ASSET = 6
QUARANTINE_KINDS = 16
PRICE_BATCH = 500  # priceBatches sends stored prices in messages of up to 500
DEFAULT_LIST_SIZE = 10  # sources, their checkpoints and runs, and any list not named here

Arguments = Mapping[str, Any]
ListSize = Callable[[Arguments, Arguments], int]
"""(the field's arguments, its parent field's arguments) -> the list's estimated length."""


def _latest_prices(args: Arguments, parent: Arguments) -> int:
    symbols = args.get("symbols")
    return len(symbols) * SOURCES_PER_ASSET if symbols else MARKET_SIZE


def _candles(args: Arguments, parent: Arguments) -> int:
    """The buckets asked for (as the resolver counts them), at most MAX_CANDLE_BUCKETS."""
    interval = args.get("interval")
    if not isinstance(interval, Interval):
        return MAX_CANDLE_BUCKETS
    start, end = args.get("from"), args.get("to")
    try:
        if isinstance(start, datetime) and isinstance(end, datetime):
            seconds = (end - start).total_seconds()
        else:
            seconds = interval.default_span.total_seconds()
        buckets = int(seconds // interval.seconds) + 1
    except (OverflowError, TypeError, ValueError):
        return MAX_CANDLE_BUCKETS
    return max(1, min(buckets, MAX_CANDLE_BUCKETS))


def _constant(size: int) -> ListSize:
    return lambda args, parent: size


LIST_SIZES: Mapping[str, ListSize] = {
    "Query.latestPrices": _latest_prices,
    "Query.candles": _candles,
    "Asset.latestPrices": _constant(SOURCES_PER_ASSET),
    "Asset.aliases": _constant(SOURCES_PER_ASSET),
    "Subscription.priceBatches": _constant(PRICE_BATCH),
    "EtlRun.quarantineReasons": _constant(QUARANTINE_KINDS),
    "QuarantineConnection.byKind": _constant(QUARANTINE_KINDS),
    # As many as the field holding the kinds asked for (its `examples`, 3 or 0 by default).
    "QuarantineReasonCount.examples": lambda args, parent: int(parent.get("examples") or 0),
}

_PAGE_LISTS = ("edges", "nodes")


@dataclass(frozen=True, slots=True)
class CostModel:
    """How rows are estimated: page sizes, and the lengths of other lists."""

    max_page_size: int
    default_page_size: int = DEFAULT_PAGE_SIZE
    list_sizes: Mapping[str, ListSize] = field(default_factory=lambda: LIST_SIZES)
    default_list_size: int = DEFAULT_LIST_SIZE


def operation_cost(
    schema: GraphQLSchema,
    document_fragments: Mapping[str, FragmentDefinitionNode],
    operation: OperationDefinitionNode,
    variables: VariableValues,
    model: CostModel,
) -> int:
    """The rows `operation` of a valid document is estimated to read with `variables` (as
    get_variable_values coerced them)."""
    root = schema.get_root_type(operation.operation)
    if root is None:
        return 0
    estimate = _Estimate(schema, document_fragments, variables, model)
    return estimate.selections(root, [operation.selection_set], None, {})


def cost_error(cost: int, maximum: int) -> GraphQLError:
    return GraphQLError(
        f"the operation is estimated to read {cost} rows, above the maximum of {maximum}: "
        "ask for smaller pages (first/last) or fewer nested lists",
        extensions={"code": QUERY_TOO_COSTLY, "cost": cost, "maximum": maximum},
    )


class _Estimate:
    def __init__(
        self,
        schema: GraphQLSchema,
        fragments: Mapping[str, FragmentDefinitionNode],
        variables: VariableValues,
        model: CostModel,
    ) -> None:
        self.schema = schema
        self.fragments = fragments
        self.variables = variables
        self.model = model

    def selections(
        self,
        parent: GraphQLObjectType | GraphQLInterfaceType,
        selection_sets: Sequence[SelectionSetNode],
        page: int | None,
        parent_args: Arguments,
    ) -> int:
        """The rows `selection_sets` (merged) read below one `parent` object; `page`: the page
        size when `parent` is a connection."""
        fields: dict[str, list[FieldNode]] = {}
        for selection_set in selection_sets:
            self._collect(selection_set, fields, set())
        total = 0
        for nodes in fields.values():
            node = nodes[0]
            definition = parent.fields.get(node.name.value)
            if definition is None:
                continue  # __typename, and introspection: no rows
            named = get_named_type(definition.type)
            if not isinstance(named, GraphQLObjectType | GraphQLInterfaceType):
                continue  # scalars and enums: no rows of their own
            args = self._arguments(definition, node)
            items = self._items(parent, node.name.value, definition, args, parent_args, page)
            if items <= 0:
                continue
            children = [n.selection_set for n in nodes if n.selection_set is not None]
            inner = self.selections(named, children, self._page(named, args), args)
            total += items * (1 + inner)
        return total

    def _items(
        self,
        parent: GraphQLObjectType | GraphQLInterfaceType,
        name: str,
        definition: GraphQLField,
        args: Arguments,
        parent_args: Arguments,
        page: int | None,
    ) -> int:
        if not isinstance(get_nullable_type(definition.type), GraphQLList):
            return 1
        if page is not None and name in _PAGE_LISTS:
            return page
        size = self.model.list_sizes.get(f"{parent.name}.{name}")
        return size(args, parent_args) if size is not None else self.model.default_list_size

    def _page(self, named: Any, args: Arguments) -> int | None:
        """The page a connection holds; None for any other type."""
        if not all(name in named.fields for name in (*_PAGE_LISTS, "pageInfo")):
            return None
        size = args.get("first")
        if size is None:
            size = args.get("last")
        if not isinstance(size, int):
            return self.model.default_page_size
        return max(0, min(size, self.model.max_page_size))

    def _arguments(self, definition: GraphQLField, node: FieldNode) -> Arguments:
        try:
            return get_argument_values(definition, node, self.variables)
        except GraphQLError:
            return {}  # reported when the field runs

    def _collect(
        self, selection_set: SelectionSetNode, fields: dict[str, list[FieldNode]], spread: set[str]
    ) -> None:
        for selection in selection_set.selections:
            if not self._included(selection):
                continue
            if isinstance(selection, FieldNode):
                key = selection.alias.value if selection.alias else selection.name.value
                fields.setdefault(key, []).append(selection)
            elif isinstance(selection, InlineFragmentNode):
                self._collect(selection.selection_set, fields, spread)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = self.fragments.get(name)
                if fragment is not None and name not in spread:
                    spread.add(name)
                    self._collect(fragment.selection_set, fields, spread)

    def _included(self, node: FieldNode | InlineFragmentNode | FragmentSpreadNode | Any) -> bool:
        """@skip / @include, read as execution reads them."""
        for directive in node.directives or ():
            name = directive.name.value
            if name not in ("skip", "include"):
                continue
            value: Any = None
            for argument in directive.arguments or ():
                if argument.name.value == "if":
                    value = argument.value
            if isinstance(value, BooleanValueNode):
                condition = value.value
            elif isinstance(value, VariableNode):
                condition = bool(self.variables.coerced.get(value.name.value))
            else:
                continue
            if condition == (name == "skip"):
                return False
        return True
