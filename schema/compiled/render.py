"""Rows to response values: a generated function per compiled selection.

A GraphQL type the compiled path renders is described once as a `Shape`: for each field, a
Python expression over the value being rendered (`Leaf`), or a child object or list (`Child`).
Compiling a selection writes one expression that builds the response (dicts in the executor's
key order), and `exec` turns it into a function: per row, only the selected fields' expressions
run, with no resolver calls.

In an expression, `{v}` is the value being rendered and `{name}` a column of a row shape (an
attribute, or a position when rows are tuples): the columns a selection reads are what its SQL
selects.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    GraphQLObjectType,
    GraphQLSchema,
)

from schema.compiled.collect import Fields, Unsupported, collect

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True, slots=True)
class Leaf:
    """A scalar field: `expression` gives its response value."""

    expression: str


@dataclass(frozen=True, slots=True)
class Child:
    """An object field, or a list of objects (`many`): `value` gives the child value(s)."""

    shape: str
    value: str = "{v}"
    many: bool = False


@dataclass(frozen=True, slots=True)
class Shape:
    """How the compiled path renders one GraphQL object type. A `row` shape reads columns."""

    name: str
    fields: Mapping[str, Leaf | Child]
    row: bool = False


Access = Literal["attribute", "position"]


@dataclass(slots=True)
class Rendering:
    """A compiled selection: the function, the columns it reads, the fields it renders."""

    render: Callable[[Any], Any]
    columns: tuple[str, ...]
    used: frozenset[tuple[str, str]]
    source: str


@dataclass(slots=True)
class _Writer:
    schema: GraphQLSchema
    shapes: Mapping[str, Shape]
    fragments: Mapping[str, FragmentDefinitionNode]
    variables: Mapping[str, Any]
    access: Access
    columns: list[str] = field(default_factory=list)
    used: set[tuple[str, str]] = field(default_factory=set)
    names: int = 0

    def fresh(self) -> str:
        self.names += 1
        return f"v{self.names}"

    def fill(self, template: str, var: str, shape: Shape) -> str:
        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name == "v":
                return var
            if not shape.row:
                raise ValueError(f"{shape.name}: column {name} outside a row shape")
            if self.access == "attribute":
                return f"{var}.{name}"
            if name not in self.columns:
                self.columns.append(name)
            return f"{var}[{self.columns.index(name)}]"

        return _PLACEHOLDER.sub(replace, template)

    def value(self, child: Child, nodes: list[FieldNode], var: str, parent: Shape) -> str:
        """The expression of a Child field's value(s), read from `var` of shape `parent`."""
        shape = self.shapes[child.shape]
        type_ = self.schema.get_type(shape.name)
        assert isinstance(type_, GraphQLObjectType), shape.name
        fields = collect(
            self.schema,
            type_,
            [node.selection_set for node in nodes],
            self.fragments,
            self.variables,
        )
        source = self.fill(child.value, var, parent)
        if not child.many:
            return self.object(shape, fields, source)
        item = self.fresh()
        return f"[{self.object(shape, fields, item)} for {item} in {source}]"

    def object(self, shape: Shape, fields: Fields, var: str) -> str:
        parts = []
        for key, nodes in fields.items():
            name = nodes[0].name.value
            if name == "__typename":
                parts.append(f"{key!r}: {shape.name!r}")
                continue
            spec = shape.fields.get(name)
            if spec is None or any(node.arguments for node in nodes):
                raise Unsupported(f"{shape.name}.{name}")
            self.used.add((shape.name, name))
            if isinstance(spec, Leaf):
                parts.append(f"{key!r}: {self.fill(spec.expression, var, shape)}")
                continue
            parts.append(f"{key!r}: {self.value(spec, nodes, var, shape)}")
        return "{" + ", ".join(parts) + "}"


def compile_rendering(
    *,
    schema: GraphQLSchema,
    shapes: Mapping[str, Shape],
    root: Child,
    nodes: list[FieldNode],
    fragments: Mapping[str, FragmentDefinitionNode],
    variables: Mapping[str, Any],
    access: Access,
    namespace: Mapping[str, Any],
    prelude: str = "",
    order_columns: Callable[[Sequence[str]], Sequence[str]] | None = None,
) -> Rendering:
    """The function rendering a root field's value (`v0`) for this selection.

    `namespace` holds the helpers the expressions call; `prelude` is code run first (for
    example, binding a per-result helper from `v0`). With `position` access, rows are tuples:
    `order_columns` says where the loader's statement puts the columns the selection reads
    (by default, in the order the selection first reads them).
    """
    writer = _Writer(schema, shapes, fragments, variables, access)
    expression = writer.value(root, nodes, "v0", _ROOT)
    if access == "position" and order_columns is not None:
        # Again, with each column where the statement the loader runs puts it.
        read = order_columns(writer.columns)
        writer = _Writer(schema, shapes, fragments, variables, access, list(read))
        expression = writer.value(root, nodes, "v0", _ROOT)
        if writer.columns != list(read):
            raise ValueError(f"{root.shape}: columns {writer.columns} outside {list(read)}")
    lines = ["def render(v0):"]
    lines += [f"    {line}" for line in prelude.splitlines() if line.strip()]
    lines.append(f"    return {expression}")
    source = "\n".join(lines) + "\n"
    scope: dict[str, Any] = dict(namespace)
    exec(compile(source, f"<compiled {root.shape}>", "exec"), scope)  # noqa: S102 - our own code
    return Rendering(scope["render"], tuple(writer.columns), frozenset(writer.used), source)


_ROOT = Shape("Query", {})
