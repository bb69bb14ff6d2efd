"""Field selection merging checked in time linear in the document.

The specification's "Field Selection Merging" rule, as graphql-core implements it
(OverlappingFieldsCanBeMergedRule), compares every pair of fields that share a response name:
`{ health { database } }` repeated 490 times (8 KB) is 120,000 comparisons and two seconds of
CPU. This rule gives the same verdicts by merging instead of pairing, the algorithm graphql-java,
Sangria and Hot Chocolate use (Simon Adameit, "GraphQL Overlapping Fields can be Merged Fast"):

- the fields of one response name at one place of the response are a set, checked once;
- `same shape`: every field of the set returns the same shape (lists, non-null, leaf types),
  compared with one of them, then the sets of their merged sub-selections in turn;
- `same for common parents`: fields whose parents could be the same object (the same object
  type, or an interface or union) name the same field with the same arguments, compared with
  one of them, then their merged sub-selections in turn.

The checks start from each operation (a fragment is checked where it is spread) and each set is
checked once (by its fields' identity), so the work is proportional to the fields the operations
select, fragments expanded: what KASPARRO_MAX_SELECTIONS bounds before any rule runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, cast

from graphql import (
    ArgumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLField,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationRule,
    get_named_type,
    is_composite_type,
    is_leaf_type,
    print_ast,
    type_from_ast,
)
from graphql.language.visitor import SKIP, VisitorAction
from graphql.type.definition import GraphQLCompositeType
from graphql.type.introspection import SchemaMetaFieldDef, TypeMetaFieldDef, TypeNameMetaFieldDef
from graphql.utilities.sort_value_node import sort_value_node
from graphql.validation import ValidationContext


class _Field(NamedTuple):
    node: FieldNode
    parent: GraphQLCompositeType | None
    definition: GraphQLField | None
    key: tuple[int, str | None]
    """The field's identity: the same node under the same parent type is the same field."""


class Conflict(NamedTuple):
    name: str
    """The response name."""
    reason: str
    nodes: tuple[FieldNode, ...]


Fields = dict[str, list[_Field]]


class FieldMerging:
    """The checks of one document, sharing what they found."""

    def __init__(self, schema: GraphQLSchema, fragments: Mapping[str, FragmentDefinitionNode]):
        self.schema = schema
        self.fragments = fragments
        self._shapes: dict[frozenset[tuple[int, str | None]], Conflict | None] = {}
        self._parents: dict[frozenset[tuple[int, str | None]], Conflict | None] = {}
        self._both: dict[object, Conflict | None] = {}
        self._arguments: dict[int, tuple[tuple[str, str], ...]] = {}

    def conflicts(
        self, parent: GraphQLCompositeType | None, selection_set: SelectionSetNode
    ) -> list[Conflict]:
        """The conflicts of a selection set (an operation's or a fragment's), one per response
        name."""
        found: list[Conflict] = []
        for name, fields in self._collect([(parent, selection_set)]).items():
            conflict = self._check(name, fields)
            if conflict is not None:
                found.append(conflict)
        return found

    # ---- the two checks ----

    def _check(self, name: str, fields: list[_Field]) -> Conflict | None:
        """Both checks of one set: at once, over the same sub-selections, while every field of
        the set may meet every other on one object (the usual case: one parent type); each in
        turn otherwise. The same fields first: graphql-core's message when both are wrong."""
        parent = fields[0].parent
        if not isinstance(parent, GraphQLObjectType) or any(
            field.parent is not parent for field in fields
        ):
            return self._same_for_common_parents(name, fields) or self._same_shape(name, fields)
        memo = fields[0].key if len(fields) == 1 else frozenset(field.key for field in fields)
        if memo in self._both:
            return self._both[memo]
        self._both[memo] = None  # a set met again while checking it: nothing new there
        conflict = self._identity_conflict(name, fields) or self._shape_conflict(name, fields)
        if conflict is None:
            for child_name, children in self._children(fields).items():
                inner = self._check(child_name, children)
                if inner is not None:
                    conflict = _nested(name, fields, inner)
                    break
        self._both[memo] = conflict
        return conflict

    def _same_shape(self, name: str, fields: list[_Field]) -> Conflict | None:
        memo = frozenset(field.key for field in fields)
        if memo in self._shapes:
            return self._shapes[memo]
        self._shapes[memo] = None  # a set met again while checking it: nothing new there
        conflict = self._shape_conflict(name, fields)
        if conflict is None:
            for child_name, children in self._children(fields).items():
                inner = self._same_shape(child_name, children)
                if inner is not None:
                    conflict = _nested(name, fields, inner)
                    break
        self._shapes[memo] = conflict
        return conflict

    def _same_for_common_parents(self, name: str, fields: list[_Field]) -> Conflict | None:
        for group in _by_common_parents(fields):
            memo = frozenset(field.key for field in group)
            if memo in self._parents:
                conflict = self._parents[memo]
            else:
                self._parents[memo] = None
                conflict = self._identity_conflict(name, group)
                if conflict is None:
                    for child_name, children in self._children(group).items():
                        inner = self._same_for_common_parents(child_name, children)
                        if inner is not None:
                            conflict = _nested(name, group, inner)
                            break
                self._parents[memo] = conflict
            if conflict is not None:
                return conflict
        return None

    def _shape_conflict(self, name: str, fields: list[_Field]) -> Conflict | None:
        reference: _Field | None = None
        for field in fields:
            if field.definition is None:
                continue
            if reference is None:
                reference = field
                continue
            assert reference.definition is not None
            first, other = reference.definition.type, field.definition.type
            if _types_conflict(first, other):
                reason = f"they return conflicting types '{first}' and '{other}'"
                return Conflict(name, reason, (reference.node, field.node))
        return None

    def _identity_conflict(self, name: str, fields: list[_Field]) -> Conflict | None:
        reference = fields[0]
        for field in fields[1:]:
            first, other = reference.node.name.value, field.node.name.value
            if first != other:
                reason = f"'{first}' and '{other}' are different fields"
                return Conflict(name, reason, (reference.node, field.node))
            if self._argument_key(reference.node) != self._argument_key(field.node):
                return Conflict(name, "they have differing arguments", (reference.node, field.node))
        return None

    def _argument_key(self, node: FieldNode) -> tuple[tuple[str, str], ...]:
        key = self._arguments.get(id(node))
        if key is None:
            key = tuple(sorted(_argument(argument) for argument in node.arguments or ()))
            self._arguments[id(node)] = key
        return key

    # ---- collecting fields ----

    def _children(self, fields: Iterable[_Field]) -> Fields:
        """The fields the sub-selections of `fields` select, merged by response name."""
        owners: list[tuple[GraphQLCompositeType | None, SelectionSetNode]] = []
        for field in fields:
            if field.node.selection_set is None or field.definition is None:
                continue
            named = get_named_type(field.definition.type)
            if is_composite_type(named):
                owners.append((named, field.node.selection_set))
        return self._collect(owners)

    def _collect(
        self, owners: Iterable[tuple[GraphQLCompositeType | None, SelectionSetNode]]
    ) -> Fields:
        fields: Fields = {}
        seen: set[tuple[int, str | None]] = set()
        spread: set[str] = set()
        for parent, selection_set in owners:
            self._collect_into(parent, selection_set, fields, seen, spread)
        return fields

    def _collect_into(
        self,
        parent: GraphQLCompositeType | None,
        selection_set: SelectionSetNode,
        fields: Fields,
        seen: set[tuple[int, str | None]],
        spread: set[str],
    ) -> None:
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                key = (id(selection), parent.name if parent is not None else None)
                if key in seen:
                    continue
                seen.add(key)
                definition = self._definition(parent, selection.name.value)
                name = selection.alias.value if selection.alias else selection.name.value
                fields.setdefault(name, []).append(_Field(selection, parent, definition, key))
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                inner = self._composite(condition) if condition is not None else parent
                self._collect_into(inner, selection.selection_set, fields, seen, spread)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = self.fragments.get(name)
                if fragment is None or name in spread:
                    continue
                spread.add(name)
                inner = self._composite(fragment.type_condition)
                self._collect_into(inner, fragment.selection_set, fields, seen, spread)

    def _composite(self, node: Any) -> GraphQLCompositeType | None:
        named = type_from_ast(self.schema, node)
        return named if is_composite_type(named) else None

    def _definition(self, parent: GraphQLCompositeType | None, name: str) -> GraphQLField | None:
        if parent is None:
            return None
        if name == "__typename":
            return TypeNameMetaFieldDef
        if parent is self.schema.query_type and name in ("__schema", "__type"):
            return SchemaMetaFieldDef if name == "__schema" else TypeMetaFieldDef
        if isinstance(parent, GraphQLObjectType | GraphQLInterfaceType):
            return cast(GraphQLField | None, parent.fields.get(name))
        return None


class FieldsCanMergeRule(ValidationRule):
    """graphql-core's OverlappingFieldsCanBeMergedRule, in linear time (see the module)."""

    def __init__(self, context: ValidationContext) -> None:
        super().__init__(context)
        document = context.document
        fragments = {
            definition.name.value: definition
            for definition in document.definitions
            if isinstance(definition, FragmentDefinitionNode)
        }
        self.merging = FieldMerging(context.schema, fragments)
        self._reported: set[str] = set()

    def enter_operation_definition(
        self, node: OperationDefinitionNode, *_args: Any
    ) -> VisitorAction:
        root = self.context.schema.get_root_type(node.operation)
        self._report(self.merging.conflicts(root, node.selection_set))
        return SKIP

    def enter_fragment_definition(self, node: FragmentDefinitionNode, *_args: Any) -> VisitorAction:
        # Checked where it is spread, as part of the operation's fields (a fragment spread
        # nowhere is an error of its own): checking each definition again on its own would walk
        # every chain of spreads once per fragment of it.
        return SKIP

    def _report(self, conflicts: list[Conflict]) -> None:
        for conflict in conflicts:
            message = (
                f"Fields '{conflict.name}' conflict because {conflict.reason}. "
                "Use different aliases on the fields to fetch both if this was intentional."
            )
            if message in self._reported:
                continue
            self._reported.add(message)
            self.report_error(GraphQLError(message, list(conflict.nodes)))


def _nested(name: str, fields: list[_Field], inner: Conflict) -> Conflict:
    """`inner`, a conflict of sub-fields, as a conflict of `fields` (which it names); one
    field's own conflict stays its sub-fields' (graphql-core reports it where it is)."""
    nodes = {id(field.node): field.node for field in fields}
    if len(nodes) == 1:
        return inner
    reason = f"subfields '{inner.name}' conflict because {inner.reason}"
    return Conflict(name, reason, (*list(nodes.values())[:2], *inner.nodes))


def _by_common_parents(fields: list[_Field]) -> list[list[_Field]]:
    """Fields that may meet on one object: those of each object type, each with the fields
    of abstract (or unknown) parents, which may be any object."""
    abstract: list[_Field] = []
    concrete: dict[str, list[_Field]] = {}
    for field in fields:
        if isinstance(field.parent, GraphQLObjectType):
            concrete.setdefault(field.parent.name, []).append(field)
        else:
            abstract.append(field)
    if not concrete:
        return [abstract]
    return [[*group, *abstract] for group in concrete.values()]


def _types_conflict(first: GraphQLOutputType, other: GraphQLOutputType) -> bool:
    """Whether two types give different shapes (graphql-core's do_types_conflict)."""
    if isinstance(first, GraphQLList):
        return not isinstance(other, GraphQLList) or _types_conflict(first.of_type, other.of_type)
    if isinstance(other, GraphQLList):
        return True
    if isinstance(first, GraphQLNonNull):
        return not isinstance(other, GraphQLNonNull) or _types_conflict(
            first.of_type, other.of_type
        )
    if isinstance(other, GraphQLNonNull):
        return True
    if is_leaf_type(first) or is_leaf_type(other):
        return first is not other
    return False


def _argument(argument: ArgumentNode) -> tuple[str, str]:
    return argument.name.value, print_ast(sort_value_node(argument.value))
