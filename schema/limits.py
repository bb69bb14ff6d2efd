"""Limits on what one GraphQL document may ask: size, tokens, depth, aliases, selections, cost,
introspection.

The schema applies them when it parses and validates a document (schema.documents: once per
distinct document text, whatever path it came by, HTTP or WebSocket). The size limit is also
checked on the HTTP body before anything parses it (server.limits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from graphql import ASTValidationRule, NoSchemaIntrospectionCustomRule

from server.settings import Settings


@dataclass(frozen=True, slots=True)
class DocumentLimits:
    """The limits of a document, and of an operation of it with its variables.

    Parsing refuses a text above `max_length` or `max_tokens`; one walk of the parsed document
    (schema.measure) refuses it above `max_depth`, `max_aliases` or `max_selections` before any
    validation rule runs; `rules` are added to the specified ones (no introspection when it is
    off, and then no "Did you mean" suggestions either); an operation whose estimated rows
    (schema.cost) pass `max_cost` is refused before it runs.
    """

    max_length: int
    max_tokens: int
    rules: tuple[type[ASTValidationRule], ...] = ()
    max_depth: int | None = None
    max_aliases: int | None = None
    max_selections: int | None = None
    max_cost: int | None = None
    max_page_size: int | None = None
    suggestions: bool = True

    @property
    def parse_options(self) -> dict[str, Any]:
        """Keyword arguments of graphql-core's `parse`: too long or too many tokens is refused
        while parsing, with the messages ErrorPolicy maps to QUERY_TOO_LARGE / TOO_MANY_TOKENS."""
        return {"max_source_length": self.max_length, "max_tokens": self.max_tokens}


def document_limits(settings: Settings) -> DocumentLimits:
    """The limits the settings ask for."""
    rules: tuple[type[ASTValidationRule], ...] = ()
    if not settings.introspection:
        rules = (NoSchemaIntrospectionCustomRule,)
    return DocumentLimits(
        settings.max_query_bytes,
        settings.max_tokens,
        rules,
        max_depth=settings.max_query_depth,
        max_aliases=settings.max_aliases,
        max_selections=settings.max_selections,
        max_cost=settings.max_query_cost,
        max_page_size=settings.max_page_size,
        # Suggestions name fields, arguments, types and values: the schema, which is private
        # while introspection is off.
        suggestions=settings.introspection,
    )
