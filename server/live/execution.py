"""Parsing, validating and executing subscription documents for the shared (fan-out) path.

The WebSocket endpoint runs queries and mutations through Strawberry as usual. A subscription
to a field the hub streams is prepared here instead: parsed and validated once per distinct
document (by the schema's DocumentCache, shared with HTTP requests and under the same limits),
its variables coerced once, and then its selection is executed once per item for all the
subscribers that share it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from inspect import isawaitable
from typing import Any

from graphql import (
    DocumentNode,
    ExecutionResult,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    VariableNode,
)
from graphql.execution import Executor, execute_subscription_event
from graphql.execution.values import get_argument_values

from schema.documents import DocumentCache
from schema.execution import EventExecutor
from schema.extensions import classify_error
from schema.live.hub import Renderer


class RequestError(Exception):
    """The request cannot run: `errors` say why (already classified, with codes)."""

    def __init__(self, errors: list[GraphQLError]) -> None:
        super().__init__(errors[0].message if errors else "invalid request")
        self.errors = errors


@dataclass(frozen=True, slots=True)
class Request:
    """One `subscribe` payload, checked to have the right shape."""

    query: str
    variables: dict[str, Any]
    operation_name: str | None

    @classmethod
    def of(cls, payload: Any) -> Request:
        if not isinstance(payload, Mapping) or not isinstance(payload.get("query"), str):
            raise RequestError([_client_error("the payload must have a `query` string")])
        variables = payload.get("variables") or {}
        name = payload.get("operationName")
        if not isinstance(variables, Mapping):
            raise RequestError([_client_error("`variables` must be an object")])
        if name is not None and not isinstance(name, str):
            raise RequestError([_client_error("`operationName` must be a string")])
        return cls(payload["query"], dict(variables), name or None)


@dataclass(frozen=True, slots=True)
class Prepared:
    """A parsed, validated document and the operation the request names."""

    document: DocumentNode
    operation: OperationDefinitionNode

    @property
    def is_subscription(self) -> bool:
        return self.operation.operation == OperationType.SUBSCRIPTION


class Documents:
    """The documents of requests, from the schema's cache (parsed and validated once a text)."""

    def __init__(self, cache: DocumentCache) -> None:
        self.cache = cache

    def prepare(self, request: Request) -> Prepared:
        """The request's document and operation; RequestError when it cannot run (the checks
        of every transport: limits, one operation, variables, cost)."""
        checked = self.cache.request(request.query, request.operation_name, request.variables)
        if checked.errors or checked.document is None or checked.operation is None:
            raise RequestError(list(checked.errors))
        return Prepared(checked.document, checked.operation)


@dataclass(frozen=True, slots=True)
class RootField:
    """The one root field of a subscription, with its coerced arguments."""

    name: str
    arguments: dict[str, Any]
    schema: GraphQLSchema
    prepared: Prepared
    request: Request

    def executor(self, context: Any) -> Executor[Any]:
        """An executor of the operation with `context` (for the per-item executions)."""
        built = _executor(self.schema, self.prepared, self.request, context)
        assert not isinstance(built, list)  # the variables were coerced once already
        return built


def _executor(
    schema: GraphQLSchema, prepared: Prepared, request: Request, context: Any
) -> Executor[Any] | list[GraphQLError]:
    # Its per-event copies keep nothing once their item is rendered (schema.execution).
    return EventExecutor.build(
        schema,
        prepared.document,
        context_value=context,
        raw_variable_values=request.variables,
        operation_name=request.operation_name,
    )


def root_field(schema: GraphQLSchema, prepared: Prepared, request: Request) -> RootField:
    """Coerce the variables and read the root field's arguments; RequestError for bad
    variables."""
    built = _executor(schema, prepared, request, None)
    if isinstance(built, list):
        raise RequestError([classify_error(error) for error in built])
    fragments = {
        definition.name.value: definition
        for definition in prepared.document.definitions
        if isinstance(definition, FragmentDefinitionNode)
    }
    node = _first_field(prepared.operation.selection_set, fragments)
    subscription_type = schema.subscription_type
    # Both guaranteed by validation.
    assert node is not None
    assert subscription_type is not None
    definition = subscription_type.fields[node.name.value]
    try:
        arguments = get_argument_values(definition, node, built.variable_values)
    except GraphQLError as error:
        raise RequestError([classify_error(error)]) from None
    return RootField(node.name.value, arguments, schema, prepared, request)


def sharing_key(
    prepared: Prepared, request: Request, resume_argument: str = "after", *, operator: bool = False
) -> str:
    """Requests with equal keys render every live item identically: the document, the operation
    and the variables, except a variable used only as the resume argument, and the view (an
    operator's shows internal details that a public client's does not)."""
    skip = _resume_variable(prepared, request.query, resume_argument)
    variables = {name: value for name, value in request.variables.items() if name != skip}
    return json.dumps(
        [request.query, request.operation_name, variables, operator],
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )


class SelectionRenderer(Renderer):
    """Executes the operation's selection with an item as root value; serialized once."""

    def __init__(self, executor: Executor[Any], refresh: Callable[[], None] | None = None) -> None:
        self.executor = executor
        self._refresh = refresh

    def refresh(self) -> None:
        if self._refresh is not None:
            self._refresh()

    async def render(self, value: Any) -> str:
        result = execute_subscription_event(self.executor.build_per_event_executor(value))
        if isawaitable(result):
            result = await result
        return result_json(result)


def result_json(result: ExecutionResult, *, classify: bool = True) -> str:
    """The `payload` of a `next` message: data, and errors with their codes."""
    body: dict[str, Any] = {"data": result.data}
    if result.errors:
        errors = [classify_error(e) for e in result.errors] if classify else result.errors
        body["errors"] = [error.formatted for error in errors]
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def _client_error(message: str, code: str = "BAD_REQUEST") -> GraphQLError:
    return GraphQLError(message, extensions={"code": code})


def _first_field(
    selection_set: SelectionSetNode, fragments: Mapping[str, FragmentDefinitionNode]
) -> FieldNode | None:
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            if selection.name.value != "__typename":
                return selection
        elif isinstance(selection, InlineFragmentNode):
            found = _first_field(selection.selection_set, fragments)
            if found is not None:
                return found
        elif isinstance(selection, FragmentSpreadNode):
            fragment = fragments.get(selection.name.value)
            if fragment is not None:
                found = _first_field(fragment.selection_set, fragments)
                if found is not None:
                    return found
    return None


def _resume_variable(prepared: Prepared, query: str, argument: str) -> str | None:
    """The variable passed as the root field's `argument`, when it appears nowhere else."""
    node = _first_field(prepared.operation.selection_set, {})
    if node is None:
        return None
    for arg in node.arguments or ():
        if arg.name.value == argument and isinstance(arg.value, VariableNode):
            name = arg.value.name.value
            # Declared once and used once: "$name" appears exactly twice in the document.
            if len(re.findall(rf"\${re.escape(name)}(?![_0-9A-Za-z])", query)) == 2:
                return name
    return None
