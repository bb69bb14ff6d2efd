"""The specification's three rules about variables, checked in the validation's own walk.

graphql-core's NoUndefinedVariablesRule, NoUnusedVariablesRule and
VariablesInAllowedPositionRule each ask the validation context for an operation's variable
usages, and the context finds them by walking the operation again with its own TypeInfo: a
second full walk of every document, a third of its validation time on a document of many
selections. `VariableRules` records each variable's usage (its position's input type, default
value and parent input type) while the validation walk passes it, and checks all three rules per
operation once the document is walked, with graphql-core's messages and locations.

Fragment arguments (graphql-core's `experimental_fragment_arguments`) are not parsed here, so
every variable in a fragment is its operation's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from graphql import (
    ArgumentNode,
    FragmentDefinitionNode,
    GraphQLError,
    GraphQLInputObjectType,
    GraphQLInputType,
    ObjectFieldNode,
    OperationDefinitionNode,
    ValidationContext,
    ValidationRule,
    VariableDefinitionNode,
    VariableNode,
    get_named_type,
    is_input_object_type,
    is_nullable_type,
    type_from_ast,
)
from graphql.pyutils import Undefined
from graphql.validation.rules.variables_in_allowed_position import allowed_variable_usage


@dataclass(frozen=True, slots=True)
class _Usage:
    node: VariableNode
    type: GraphQLInputType | None
    parent_type: GraphQLInputType | None
    default_value: Any


class VariableRules(ValidationRule):
    """All variables used are defined, all defined are used, and each is used where its type
    is allowed (https://spec.graphql.org/draft/#sec-Validation.Variables)."""

    def __init__(self, context: ValidationContext) -> None:
        super().__init__(context)
        self._usages: dict[int, list[_Usage]] = {}  # by id() of an operation or fragment
        self._current: list[_Usage] | None = None
        self._operations: list[OperationDefinitionNode] = []
        self._in_definition = False

    def enter_operation_definition(self, node: OperationDefinitionNode, *_args: Any) -> None:
        self._current = self._usages[id(node)] = []
        self._operations.append(node)

    def enter_fragment_definition(self, node: FragmentDefinitionNode, *_args: Any) -> None:
        self._current = self._usages[id(node)] = []

    def enter_variable_definition(self, node: VariableDefinitionNode, *_args: Any) -> None:
        self._in_definition = True  # `$name: Type` defines, it does not use

    def leave_variable_definition(self, node: VariableDefinitionNode, *_args: Any) -> None:
        self._in_definition = False

    def enter_variable(self, node: VariableNode, _key: Any, parent: Any, *_args: Any) -> None:
        if self._current is None or self._in_definition:
            return
        context = self.context
        self._current.append(
            _Usage(
                node,
                context.get_input_type(),
                context.get_parent_input_type(),
                self._default_value(parent),
            )
        )

    def _default_value(self, parent: Any) -> Any:
        """The default of the position a variable stands in, as graphql-core's TypeInfo gives
        it: an argument's or an input field's, none for a list item."""
        if isinstance(parent, ArgumentNode):
            argument = self.context.get_argument()
            return argument.default_value if argument is not None else Undefined
        if isinstance(parent, ObjectFieldNode):
            owner = get_named_type(self.context.get_parent_input_type())
            if isinstance(owner, GraphQLInputObjectType):
                field = owner.fields.get(parent.name.value)
                if field is not None:
                    return field.default_value
        return Undefined

    def leave_document(self, *_args: Any) -> None:
        for operation in self._operations:
            usages = list(self._usages.get(id(operation), ()))
            for fragment in self.context.get_recursively_referenced_fragments(operation):
                usages += self._usages.get(id(fragment), ())
            self._check(operation, usages)

    def _check(self, operation: OperationDefinitionNode, usages: list[_Usage]) -> None:
        definitions = {
            definition.variable.name.value: definition
            for definition in operation.variable_definitions or ()
        }
        name = operation.name.value if operation.name else None
        # NoUndefinedVariablesRule
        for usage in usages:
            variable = usage.node.name.value
            if variable not in definitions:
                self.report_error(
                    GraphQLError(
                        f"Variable '${variable}' is not defined by operation '{name}'."
                        if name
                        else f"Variable '${variable}' is not defined.",
                        [usage.node, operation],
                    )
                )
        # NoUnusedVariablesRule
        used = {usage.node.name.value for usage in usages}
        for variable, definition in definitions.items():
            if variable not in used:
                self.report_error(
                    GraphQLError(
                        f"Variable '${variable}' is never used in operation '{name}'."
                        if name
                        else f"Variable '${variable}' is never used.",
                        definition,
                    )
                )
        # VariablesInAllowedPositionRule
        schema = self.context.schema
        for usage in usages:
            variable = usage.node.name.value
            found = definitions.get(variable)
            if found is None or usage.type is None:
                continue
            definition = found
            var_type = type_from_ast(schema, definition.type)
            if var_type is None:
                continue
            if not allowed_variable_usage(
                schema, var_type, definition.default_value, usage.type, usage.default_value
            ):
                self.report_error(
                    GraphQLError(
                        f"Variable '${variable}' of type '{var_type}' used"
                        f" in position expecting type '{usage.type}'.",
                        [definition, usage.node],
                    )
                )
            parent = usage.parent_type
            if is_input_object_type(parent) and parent.is_one_of and is_nullable_type(var_type):
                self.report_error(
                    GraphQLError(
                        f"Variable '${variable}' is of type '{var_type}'"
                        " but must be non-nullable to be used for OneOf"
                        f" Input Object '{parent}'.",
                        [definition, usage.node],
                    )
                )
