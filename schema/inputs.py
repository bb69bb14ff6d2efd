"""Bounds every argument of a root field is checked against before a resolver sees it.

GraphQL's own coercion checks types (an Int is 32 bits, an enum is one of its values); these
checks add what the storage needs: text that PostgreSQL can hold (no NUL character, valid
UTF-8), of a bounded length, and ids that fit the column they are compared with. A value
outside them is the client's mistake, answered BAD_USER_INPUT naming the argument; it never
reaches SQL, where it would fail as a database error.

`CheckedArguments` is a field extension that only reshapes arguments (no resolve wrapper, so it
costs nothing per resolved value); the compiled path applies `check_arguments` to the same
converted arguments (schema.compiled.plan).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any

from strawberry.extensions.field_extension import FieldExtension
from strawberry.types.arguments import StrawberryArgument
from strawberry.types.field import StrawberryField
from strawberry.utils.str_converters import to_camel_case

from server.errors import UserError

# Longer than any symbol, slug, name, source or cursor this API hands out.
MAX_TEXT_LENGTH = 1_000

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1

_DIGITS = re.compile(r"[0-9]{1,19}")


def check_text(value: str, argument: str) -> str:
    """`value` if the databases can compare it: no NUL, valid UTF-8, at most MAX_TEXT_LENGTH."""
    if len(value) > MAX_TEXT_LENGTH:
        raise UserError(
            f"`{argument}` is {len(value)} characters long; at most {MAX_TEXT_LENGTH} are accepted",
            maximum=MAX_TEXT_LENGTH,
        )
    if "\x00" in value:
        raise UserError(f"`{argument}` contains a NUL character, which no value here holds")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise UserError(
            f"`{argument}` is not valid Unicode text (a lone surrogate escape)"
        ) from None
    return value


def parse_id(value: str, argument: str, *, what: str, maximum: int = INT64_MAX) -> int:
    """The positive integer id in `value`, at most `maximum` (the id column's range), or
    BAD_USER_INPUT naming the argument."""
    number = int(value) if _DIGITS.fullmatch(value) else 0
    if not 1 <= number <= maximum:
        raise UserError(
            f"`{argument}` must be {what} (a positive integer up to {maximum}), got {_shown(value)}"
        )
    return number


def _shown(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:40] + "\u2026")


def check_arguments(arguments: Iterable[StrawberryArgument], kwargs: Mapping[str, Any]) -> None:
    """Every text in the converted `kwargs` of a field with these `arguments` checked (through
    lists and input objects); UserError naming the first argument that fails."""
    for argument in arguments:
        value = kwargs.get(argument.python_name)
        if value is not None:
            _check_value(value, argument.graphql_name or to_camel_case(argument.python_name))


def check_values(arguments: Mapping[str, Any]) -> None:
    """Every text in coerced GraphQL `arguments` (by GraphQL name, as graphql-core gives them)
    checked, through lists and input objects; UserError naming the first that fails."""
    for name, value in arguments.items():
        if value is not None:
            _check_value(value, name)


def _check_value(value: Any, name: str) -> None:
    if isinstance(value, str):
        check_text(value, name)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_value(item, name)
    elif isinstance(value, Mapping):
        for key, inner in value.items():
            if inner is not None:
                _check_value(inner, f"{name}.{key}")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            inner = getattr(value, field.name, None)
            if inner is not None:
                _check_value(inner, f"{name}.{_graphql_name(value, field.name)}")


def _graphql_name(value: Any, python_name: str) -> str:
    definition = getattr(type(value), "__strawberry_definition__", None)
    for field in getattr(definition, "fields", ()):
        if field.python_name == python_name:
            return str(field.graphql_name or to_camel_case(python_name))
    return to_camel_case(python_name)


class CheckedArguments(FieldExtension):
    """Checks a field's converted arguments (`check_arguments`) before its resolver runs."""

    def __init__(self) -> None:
        self.arguments: list[StrawberryArgument] = []

    def apply(self, field: StrawberryField) -> None:
        self.arguments = list(field.arguments)

    def map_arguments(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        check_arguments(self.arguments, kwargs)
        return kwargs


def check_root_arguments(*root_types: Any) -> None:
    """Adds CheckedArguments to every field of these (merged) root types."""
    for root_type in root_types:
        for field in root_type.__strawberry_definition__.fields:
            if not any(isinstance(e, CheckedArguments) for e in field.extensions):
                extension = CheckedArguments()
                field.extensions.append(extension)
                extension.apply(field)
