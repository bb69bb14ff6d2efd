"""Field collection (the specification's CollectFields) for the compiled path.

Fragments and inline fragments are flattened, @skip/@include are applied with the request's
variables, and fields are grouped by response key in first-seen order: the order graphql-core's
executor writes them in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from graphql import (
    BooleanValueNode,
    DirectiveNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    NamedTypeNode,
    Node,
    SelectionSetNode,
    VariableNode,
)

Fields = dict[str, list[FieldNode]]
"""Response key -> the field nodes merged under it."""


class Unsupported(Exception):
    """The document needs something the compiled path leaves to the standard executor."""


def collect(
    schema: GraphQLSchema,
    type_: GraphQLObjectType,
    selection_sets: Iterable[SelectionSetNode | None],
    fragments: Mapping[str, FragmentDefinitionNode],
    variables: Mapping[str, Any],
) -> Fields:
    """The fields of `type_` that these selection sets ask for, by response key."""
    fields: Fields = {}
    visited: set[str] = set()

    def applies(condition: NamedTypeNode | None) -> bool:
        if condition is None or condition.name.value == type_.name:
            return True
        named = schema.get_type(condition.name.value)
        return named is not None and schema.is_sub_type(named, type_)  # type: ignore[arg-type]

    def walk(selection_set: SelectionSetNode | None) -> None:
        if selection_set is None:
            return
        for selection in selection_set.selections:
            if not included(selection, variables):
                continue
            if isinstance(selection, FieldNode):
                key = selection.alias.value if selection.alias else selection.name.value
                fields.setdefault(key, []).append(selection)
            elif isinstance(selection, InlineFragmentNode):
                if applies(selection.type_condition):
                    walk(selection.selection_set)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                if name in visited:
                    continue
                visited.add(name)
                fragment = fragments.get(name)
                if fragment is None:
                    raise Unsupported(f"unknown fragment {name}")
                if applies(fragment.type_condition):
                    walk(fragment.selection_set)

    for selection_set in selection_sets:
        walk(selection_set)
    return fields


def included(node: Node, variables: Mapping[str, Any]) -> bool:
    """@skip(if:) and @include(if:), with literal or variable conditions."""
    for directive in getattr(node, "directives", None) or ():
        name = directive.name.value
        if name not in ("skip", "include"):
            raise Unsupported(f"directive @{name}")
        condition = _condition(directive, variables)
        if condition == (name == "skip"):
            return False
    return True


def _condition(directive: DirectiveNode, variables: Mapping[str, Any]) -> bool:
    for argument in directive.arguments or ():
        if argument.name.value != "if":
            continue
        value = argument.value
        if isinstance(value, BooleanValueNode):
            return value.value
        if isinstance(value, VariableNode):
            given = variables.get(value.name.value)
            if isinstance(given, bool):
                return given
        break
    raise Unsupported(f"@{directive.name.value} without a boolean condition")


def directive_variables(nodes: Iterable[Node]) -> tuple[str, ...]:
    """The variables that @skip/@include conditions read anywhere under `nodes`, sorted: the
    values that decide which fields a request collects."""
    names: set[str] = set()

    def visit(node: Node) -> None:
        for directive in getattr(node, "directives", None) or ():
            for argument in directive.arguments or ():
                if isinstance(argument.value, VariableNode):
                    names.add(argument.value.name.value)
        selection_set = getattr(node, "selection_set", None)
        for selection in selection_set.selections if selection_set else ():
            visit(selection)

    for node in nodes:
        visit(node)
    return tuple(sorted(names))
