"""The size of a document in one walk: depth, aliases and selections, each fragment measured once.

Strawberry's depth and alias limiters walk every fragment again at each place it is spread, so a
chain of fragments each spreading the next twice costs 2^n steps (16 such fragments, 700 bytes,
take a third of a second). Here a fragment is measured once and its figures reused wherever it
is spread, so the walk is linear in the document while the figures are those of the expanded
document: what execution would collect.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
)

from schema.limits import DocumentLimits

QUERY_TOO_DEEP = "QUERY_TOO_DEEP"
TOO_MANY_ALIASES = "TOO_MANY_ALIASES"
TOO_MANY_SELECTIONS = "TOO_MANY_SELECTIONS"


class Size(NamedTuple):
    """What a selection set asks for, its fragments expanded."""

    depth: int
    """Levels of fields below it (a leaf is 0; introspection fields are not counted, as
    Strawberry's QueryDepthLimiter does not count them: MaxIntrospectionDepthRule bounds them)."""
    aliases: int
    """Aliased fields."""
    selections: int
    """Fields, inline fragments and fragment spreads."""


EMPTY = Size(0, 0, 0)


class Measure:
    """Sizes of the operations of one document."""

    def __init__(self, document: DocumentNode) -> None:
        self.fragments: Mapping[str, FragmentDefinitionNode] = {
            definition.name.value: definition
            for definition in document.definitions
            if isinstance(definition, FragmentDefinitionNode)
        }
        self.operations = [
            definition
            for definition in document.definitions
            if isinstance(definition, OperationDefinitionNode)
        ]
        self._sizes: dict[str, Size] = {}
        self._open: set[str] = set()

    def operation(self, operation: OperationDefinitionNode) -> Size:
        return self.selection_set(operation.selection_set)

    def selection_set(self, selection_set: SelectionSetNode) -> Size:
        depth = aliases = 0
        selections = len(selection_set.selections)
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                if selection.alias is not None:
                    aliases += 1
                if selection.selection_set is None:
                    continue
                inner = self.selection_set(selection.selection_set)
                if not selection.name.value.startswith("__") and inner.depth >= depth:
                    depth = inner.depth + 1
            elif isinstance(selection, InlineFragmentNode):
                inner = self.selection_set(selection.selection_set)
                depth = max(depth, inner.depth)
            elif isinstance(selection, FragmentSpreadNode):
                inner = self.fragment(selection.name.value)
                depth = max(depth, inner.depth)
            else:
                continue
            aliases += inner.aliases
            selections += inner.selections
        return Size(depth, aliases, selections)

    def fragment(self, name: str) -> Size:
        """A fragment's size, measured on first use; an unknown fragment, or one that spreads
        itself, is empty here (validation reports both)."""
        size = self._sizes.get(name)
        if size is not None:
            return size
        definition = self.fragments.get(name)
        if definition is None or name in self._open:
            return EMPTY
        self._open.add(name)
        try:
            size = self.selection_set(definition.selection_set)
        finally:
            self._open.discard(name)
        self._sizes[name] = size
        return size


def limit_errors(document: DocumentNode, limits: DocumentLimits) -> list[GraphQLError]:
    """Why `document` is above the depth, alias or selection limits; empty when within them."""
    measure = Measure(document)
    try:
        sizes = [(operation, measure.operation(operation)) for operation in measure.operations]
    except RecursionError:
        message = "the document nests selections too deeply to be measured"
        return [GraphQLError(message, extensions={"code": QUERY_TOO_DEEP})]
    errors: list[GraphQLError] = []
    if limits.max_depth is not None:
        for operation, size in sizes:
            if size.depth > limits.max_depth:
                name = operation.name.value if operation.name else "anonymous"
                errors.append(
                    GraphQLError(
                        f"'{name}' exceeds maximum operation depth of {limits.max_depth}",
                        operation,
                        extensions={
                            "code": QUERY_TOO_DEEP,
                            "depth": size.depth,
                            "maximum": limits.max_depth,
                        },
                    )
                )
    aliases = sum(size.aliases for _, size in sizes)
    if limits.max_aliases is not None and aliases > limits.max_aliases:
        errors.append(
            GraphQLError(
                f"{aliases} aliases found. Allowed: {limits.max_aliases}",
                extensions={"code": TOO_MANY_ALIASES, "maximum": limits.max_aliases},
            )
        )
    selections = sum(size.selections for _, size in sizes)
    if limits.max_selections is not None and selections > limits.max_selections:
        errors.append(
            GraphQLError(
                f"the document selects {selections} fields and fragments (each fragment counted "
                f"where it is spread), above the maximum of {limits.max_selections}",
                extensions={
                    "code": TOO_MANY_SELECTIONS,
                    "selections": selections,
                    "maximum": limits.max_selections,
                },
            )
        )
    return errors
