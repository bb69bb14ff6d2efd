"""GraphQL documents parsed and validated once per document text, not once per request.

graphql-core builds every validation rule anew for each document it validates, and the depth
and alias limits walk the document again: for the small queries a frontend repeats, that costs
more than running them. Each schema keeps one `DocumentCache` (an LRU by text, checked under
that schema's limits), which every way in uses: Strawberry's HTTP path (the `CachedDocuments`
extension), the WebSocket subscriptions (server.live) and the compiled fast path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple, cast

from graphql import DocumentNode, GraphQLError, GraphQLSchema, parse, specified_rules
from strawberry.extensions import SchemaExtension
from strawberry.schema.schema import validate_document

from schema.extensions import classify_error
from server.limits import DocumentLimits
from server.lru import LRU

# Distinct documents kept, and the lexical tokens they may hold together. A parsed document
# takes about 400-600 bytes a token, so the budget bounds the cache near 100 MB in the worst
# case (every entry at KASPARRO_MAX_TOKENS); the usual queries are a few hundred tokens each.
DOCUMENT_CACHE_SIZE = 1024
DOCUMENT_CACHE_TOKENS = 200_000


class CheckedDocument(NamedTuple):
    """A document text, parsed and validated."""

    document: DocumentNode | None
    """The parsed document; None when the text does not parse."""
    errors: tuple[GraphQLError, ...]
    """Why it cannot run (each with `extensions.code`); empty when the document is valid."""

    @property
    def valid(self) -> bool:
        return not self.errors


class DocumentCache:
    """Parses and validates documents against one schema under its limits, once per text.

    Validation is Strawberry's (graphql-core's specified rules and Strawberry's own) plus the
    limit rules; parsing refuses a text above the length or token limit. Shared by every
    request: never mutate what it returns.
    """

    def __init__(
        self,
        schema: GraphQLSchema,
        limits: DocumentLimits | None = None,
        *,
        max_entries: int = DOCUMENT_CACHE_SIZE,
        max_tokens: int = DOCUMENT_CACHE_TOKENS,
    ) -> None:
        self.schema = schema
        self.limits = limits
        self.parse_options: dict[str, Any] = limits.parse_options if limits else {}
        self.extra_rules = limits.rules if limits else ()
        self._rules = (*specified_rules, *self.extra_rules)
        self._entries: LRU[str, CheckedDocument] = LRU(max_entries, max_tokens)

    def document(self, query: str) -> CheckedDocument:
        """`query` parsed and validated: from the cache, else checked now and kept."""
        checked = self._entries.get(query)
        if checked is None:
            checked = self._check(query)
            self._entries.put(query, checked, _token_count(checked.document))
        return checked

    def __len__(self) -> int:
        return len(self._entries)

    def _check(self, query: str) -> CheckedDocument:
        try:
            document = parse(query, **self.parse_options)
        except GraphQLError as error:
            return CheckedDocument(None, (classify_error(error),))
        errors = validate_document(self.schema, document, self._rules)
        return CheckedDocument(document, tuple(classify_error(error) for error in errors))


class CachedDocuments(SchemaExtension):
    """Strawberry's parse and validate steps, served from the schema's DocumentCache.

    A text that does not parse is left to Strawberry, which parses it again under the same
    limits and reports the same error (only valid and invalid-but-parsed documents are worth
    keeping a tree of). A document set by someone else is validated by Strawberry, with the
    limit rules added.
    """

    _checked: CheckedDocument | None = None

    def _cache(self) -> DocumentCache | None:
        cache = getattr(self.execution_context.schema, "documents", None)
        return cache if isinstance(cache, DocumentCache) else None

    def on_operation(self) -> Iterator[None]:
        cache = self._cache()
        if cache is not None:
            cast(dict[str, Any], self.execution_context.parse_options).update(cache.parse_options)
        yield

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        cache = self._cache()
        if cache is not None and context.graphql_document is None and context.query:
            checked = cache.document(context.query)
            if checked.document is not None:
                context.graphql_document = checked.document
                self._checked = checked
        yield

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        checked = self._checked
        if checked is not None and context.graphql_document is checked.document:
            # Strawberry validates only while pre_execution_errors is None.
            context.pre_execution_errors = list(checked.errors)
        elif (cache := self._cache()) is not None:
            context.validation_rules = (*context.validation_rules, *cache.extra_rules)
        yield


def _token_count(document: DocumentNode | None) -> int:
    """The lexical tokens of a parsed document (its weight in the cache); 1 without one."""
    count = 0
    token = document.loc.start_token if document is not None and document.loc else None
    while token is not None:
        count += 1
        token = token.next
    return max(count, 1)
