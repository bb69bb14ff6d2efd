"""Compiling a document for the compiled path, and running it.

`Compiler.plan(query, operation_name)` gives an `OperationPlan` once per distinct request text
(an LRU cache), or None when the standard executor must run it: an invalid document, an
operation that is not a query, a root field or a selection the compiled path does not render.
A plan compiles each variant of its selection (one per value of the variables its @skip/@include
conditions read) on first use.

`OperationPlan.execute` returns the response's `data`, or None to hand the request to the
executor: variables that do not coerce, and every error a loader raises (a bad cursor, an
unknown source, the database down...) are the executor's to report, so each error reads the same
whichever path met it first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    GraphQLField,
    GraphQLSchema,
    OperationDefinitionNode,
    OperationType,
    get_argument_values,
    get_operation_ast,
    get_variable_values,
)
from strawberry.types.arguments import StrawberryArgument, convert_arguments

from schema.compiled.collect import Unsupported, collect, directive_variables
from schema.compiled.render import Access, Child, Rendering, Shape, compile_rendering
from schema.compiled.values import operator_view
from schema.disclosure import is_operator
from schema.documents import document_bytes
from schema.inputs import check_arguments
from server.lru import LRU, text_bytes

PLAN_CACHE_SIZE = 1000
# And in bytes: a plan counts its text and document (which it keeps alive even once the
# document cache has let it go), its compiled parts, and its bound-arguments cache at its
# fullest.
PLAN_CACHE_BYTES = 64 * 1024 * 1024
PLAN_BYTES = 8 * 1024
MAX_VARIANTS = 32
# Distinct variables per plan whose coerced arguments are kept, and the bytes they may take
# (their JSON text, and the coerced arguments as much again).
BOUND_CACHE_SIZE = 64
BOUND_CACHE_BYTES = 32 * 1024

Loader = Callable[[Any, dict[str, Any], Rendering], Awaitable[Any]]
"""(context, the resolver's keyword arguments, the compiled rendering) -> the value to render."""


@dataclass(frozen=True, slots=True)
class RootSpec:
    """A root query field the compiled path serves: how to load its value, and how that value
    renders (`root`: a Child of the Query whose value is the loaded one)."""

    root: Child
    load: Loader
    access: Access = "attribute"
    prelude: str = ""
    # With `position` access: the columns the loader's statement reads, in its order, for the
    # columns a selection needs.
    order_columns: Callable[[Sequence[str]], Sequence[str]] | None = None


@dataclass(frozen=True, slots=True)
class Catalog:
    """Everything the compiled path knows: root fields by name, shapes by type name, and the
    helpers generated code calls."""

    roots: Mapping[str, RootSpec]
    shapes: Mapping[str, Shape]
    namespace: Mapping[str, Any]


@dataclass(slots=True)
class _Root:
    key: str
    spec: RootSpec | None  # None: __typename
    node: FieldNode | None = None
    definition: GraphQLField | None = None
    arguments: list[StrawberryArgument] = field(default_factory=list)
    rendering: Rendering | None = None


class Compiler:
    """Plans per request text, for one schema (a schema.root.Schema: its document cache)."""

    def __init__(
        self,
        schema: Any,
        catalog: Catalog,
        *,
        cache_size: int = PLAN_CACHE_SIZE,
        cache_bytes: int = PLAN_CACHE_BYTES,
    ) -> None:
        self.strawberry = schema
        self.schema: GraphQLSchema = schema._schema
        self.catalog = catalog
        # A plan, or None (the executor's): kept in a tuple so that a miss is told from None.
        self._plans: LRU[tuple[str, str | None], tuple[OperationPlan | None]] = LRU(
            cache_size, cache_bytes
        )

    def plan(self, query: str, operation_name: str | None) -> OperationPlan | None:
        key = (query, operation_name)
        cached = self._plans.get(key)
        if cached is None:
            plan = self._compile(query, operation_name)
            size = text_bytes(query, operation_name)
            if plan is not None:
                size += document_bytes(query, plan.document) + PLAN_BYTES + BOUND_CACHE_BYTES
            cached = (plan,)
            self._plans.put(key, cached, size)
        return cached[0]

    def _compile(self, query: str, operation_name: str | None) -> OperationPlan | None:
        # Parsed and validated once per text, under the executor's own rules and limits.
        document, errors = self.strawberry.documents.document(query)
        if document is None or errors:
            return None
        operation = get_operation_ast(document, operation_name)
        if operation is None or operation.operation != OperationType.QUERY:
            return None
        fragments = {
            definition.name.value: definition
            for definition in document.definitions
            if isinstance(definition, FragmentDefinitionNode)
        }
        if any(fragment.variable_definitions for fragment in fragments.values()):
            return None
        return OperationPlan(self, document, operation, fragments)


class OperationPlan:
    """One query operation of one document, compiled per @skip/@include variant."""

    def __init__(
        self,
        compiler: Compiler,
        document: DocumentNode,
        operation: OperationDefinitionNode,
        fragments: dict[str, FragmentDefinitionNode],
    ) -> None:
        self.compiler = compiler
        self.document = document
        self.operation = operation
        self.fragments = fragments
        self.name = operation.name.value if operation.name else None
        self._conditions = directive_variables([operation, *fragments.values()])
        self._variants: dict[tuple[Any, ...], list[_Root] | None] = {}
        self._requests: LRU[bytes, tuple[list[tuple[_Root, dict[str, Any]]] | None]] = LRU(
            BOUND_CACHE_SIZE, BOUND_CACHE_BYTES
        )

    async def execute(
        self, context: Any, variables: Mapping[str, Any] | None
    ) -> dict[str, Any] | None:
        """The response's data, or None when the standard executor must answer instead."""
        bound = self._bound(variables or {})
        if bound is None:
            return None
        data: dict[str, Any] = {}
        # What the renderings show of the server's insides depends on who asks.
        view = operator_view.set(is_operator(context))
        try:
            return await self._run(context, bound, data)
        finally:
            operator_view.reset(view)

    async def _run(
        self, context: Any, bound: list[tuple[_Root, dict[str, Any]]], data: dict[str, Any]
    ) -> dict[str, Any] | None:
        for root, kwargs in bound:
            if root.spec is None:
                data[root.key] = "Query"
                continue
            assert root.rendering is not None
            try:
                value = await root.spec.load(context, kwargs, root.rendering)
                data[root.key] = root.rendering.render(value)
            except Exception:  # the executor reports it, exactly as it always does
                return None
        return data

    def _bound(self, variables: Mapping[str, Any]) -> list[tuple[_Root, dict[str, Any]]] | None:
        """The variant these variables select, each root field with its resolver's arguments;
        None when the variables do not coerce. Kept per distinct variables: a frontend sends
        the same few again and again."""
        key = orjson.dumps(variables, option=orjson.OPT_SORT_KEYS)
        cached = self._requests.get(key)
        if cached is not None:
            return cached[0]
        bound = None
        coerced = get_variable_values(
            self.compiler.schema, self.operation.variable_definitions or (), dict(variables)
        )
        if not isinstance(coerced, list):
            roots = self._variant(coerced.coerced)
            try:
                bound = None if roots is None else [(r, self._kwargs(r, coerced)) for r in roots]
            except Exception:  # arguments the executor will report on
                bound = None
        self._requests.put(key, (bound,), text_bytes(key) + len(key) + 256)
        return bound

    def _kwargs(self, root: _Root, coerced: Any) -> dict[str, Any]:
        if root.spec is None:
            return {}
        assert root.definition is not None
        assert root.node is not None
        raw = get_argument_values(root.definition, root.node, coerced)
        strawberry = self.compiler.strawberry
        kwargs = convert_arguments(
            raw,
            root.arguments,
            scalar_registry=strawberry.schema_converter.scalar_registry,
            config=strawberry.config,
        )
        # The executor's bounds (CheckedArguments): a value outside them is its to report.
        check_arguments(root.arguments, kwargs)
        return kwargs

    def _variant(self, variables: Mapping[str, Any]) -> list[_Root] | None:
        key = tuple(variables.get(name) for name in self._conditions)
        try:
            return self._variants[key]
        except KeyError:
            pass
        if len(self._variants) >= MAX_VARIANTS:
            return None
        try:
            roots = self._compile_variant(variables)
        except Unsupported:
            roots = None
        self._variants[key] = roots
        return roots

    def _compile_variant(self, variables: Mapping[str, Any]) -> list[_Root]:
        compiler = self.compiler
        schema = compiler.schema
        query_type = schema.query_type
        assert query_type is not None
        fields = collect(
            schema, query_type, [self.operation.selection_set], self.fragments, variables
        )
        roots: list[_Root] = []
        for key, nodes in fields.items():
            name = nodes[0].name.value
            if name == "__typename":
                roots.append(_Root(key, None))
                continue
            spec = compiler.catalog.roots.get(name)
            if spec is None:
                raise Unsupported(name)
            definition = query_type.fields[name]
            strawberry_field = definition.extensions.get("strawberry-definition")
            if strawberry_field is None:
                raise Unsupported(name)
            rendering = compile_rendering(
                schema=schema,
                shapes=compiler.catalog.shapes,
                root=spec.root,
                nodes=nodes,
                fragments=self.fragments,
                variables=variables,
                access=spec.access,
                namespace=compiler.catalog.namespace,
                prelude=spec.prelude,
                order_columns=spec.order_columns,
            )
            roots.append(
                _Root(
                    key,
                    spec,
                    nodes[0],
                    definition,
                    list(strawberry_field.arguments),
                    rendering,
                )
            )
        return roots
