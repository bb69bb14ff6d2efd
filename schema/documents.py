"""GraphQL documents parsed and validated once per document text, not once per request.

graphql-core builds every validation rule anew for each document it validates: for the small
queries a frontend repeats, that costs more than running them. Each schema keeps one
`DocumentCache` (an LRU by text, checked under that schema's limits), which every way in uses:
Strawberry's HTTP path (the `CachedDocuments` extension), the WebSocket subscriptions
(server.live) and the compiled fast path.

Checking a document costs time linear in it, so no document within the size limits can hold the
event loop: one walk measures its depth, aliases and selections (schema.measure) and refuses it
before any rule runs, and field merging is checked by merging (schema.merging) instead of
graphql-core's pairwise OverlappingFieldsCanBeMergedRule. A request (a document, the operation
it names and its variables) is then checked once per distinct request (`DocumentCache.request`):
exactly one operation to run, variables that coerce, and an estimated cost within the limit
(schema.cost).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple, cast

import orjson
from graphql import (
    DocumentNode,
    FragmentDefinitionNode,
    GraphQLError,
    GraphQLSchema,
    NoUndefinedVariablesRule,
    NoUnusedVariablesRule,
    OperationDefinitionNode,
    OverlappingFieldsCanBeMergedRule,
    VariablesInAllowedPositionRule,
    get_variable_values,
    parse,
    specified_rules,
)
from graphql.validation import (
    ASTValidationRule,
    DeferStreamDirectiveLabel,
    DeferStreamDirectiveOnRootField,
    DeferStreamDirectiveOnValidOperationsRule,
    StreamDirectiveOnListField,
    ValidationContext,
    ValidationRule,
)
from strawberry.extensions import SchemaExtension
from strawberry.schema import schema as strawberry_schema
from strawberry.schema.validation_rules.maybe_null import MaybeNullValidationRule
from strawberry.schema.validation_rules.one_of import OneOfInputValidationRule

from schema.cost import CostModel, cost_error, operation_cost
from schema.extensions import classify_error
from schema.limits import DocumentLimits
from schema.measure import QUERY_TOO_DEEP, TOO_MANY_SELECTIONS, limit_errors
from schema.merging import FieldsCanMergeRule
from schema.variables import VariableRules
from server.lru import LRU, text_bytes

# Distinct documents kept, and the lexical tokens they may hold together. A parsed document
# takes about 400-600 bytes a token, so the budget bounds the cache near 100 MB in the worst
# case (every entry at KASPARRO_MAX_TOKENS); the usual queries are a few hundred tokens each.
DOCUMENT_CACHE_SIZE = 1024
DOCUMENT_CACHE_TOKENS = 200_000
# And in bytes: a document's text plus its parse at DOCUMENT_BYTES_PER_TOKEN a token (a string
# literal is one token of any length: its text counts as it is).
DOCUMENT_CACHE_BYTES = 64 * 1024 * 1024
DOCUMENT_BYTES_PER_TOKEN = 500
# Distinct requests (document, operation name, variables) whose verdict is kept: a frontend
# sends the same few again and again. Each holds its text and variables (a request body, at most
# KASPARRO_MAX_QUERY_BYTES), so about 20 MB at worst.
REQUEST_CACHE_SIZE = 1024
# And in bytes: each entry counts its key's text and variables, and its coerced variables as
# much again (`_request_bytes`).
REQUEST_CACHE_BYTES = 16 * 1024 * 1024

# The three rules about variables, each of which walks every operation again to find its
# variables' usages: checked together in the validation's own walk (schema.variables).
VARIABLE_RULES = (
    NoUndefinedVariablesRule,
    NoUnusedVariablesRule,
    VariablesInAllowedPositionRule,
)
# The specified rules with field merging checked in linear time and the variable rules in the
# one walk, then Strawberry's own rules (those its validate_document adds).
VALIDATION_RULES: tuple[type[ASTValidationRule], ...] = (
    *(
        FieldsCanMergeRule if rule is OverlappingFieldsCanBeMergedRule else rule
        for rule in specified_rules
        if rule not in VARIABLE_RULES
    ),
    VariableRules,
    MaybeNullValidationRule,
    OneOfInputValidationRule,
)
# The rules about @defer and @stream, which a schema without those directives never needs:
# KnownDirectivesRule refuses the directives themselves.
DEFER_STREAM_RULES = frozenset(
    {
        DeferStreamDirectiveLabel,
        DeferStreamDirectiveOnRootField,
        DeferStreamDirectiveOnValidOperationsRule,
        StreamDirectiveOnListField,
    }
)


def validation_rules(schema: GraphQLSchema) -> tuple[type[ASTValidationRule], ...]:
    """VALIDATION_RULES, less those that cannot fire on `schema` (every visitor costs a call
    per node it handles)."""
    if schema.get_directive("defer") is None and schema.get_directive("stream") is None:
        return tuple(rule for rule in VALIDATION_RULES if rule not in DEFER_STREAM_RULES)
    return VALIDATION_RULES


OPERATION_NAME_REQUIRED = "the document must name the operation to run (operationName)"


class CheckedDocument(NamedTuple):
    """A document text, parsed and validated."""

    document: DocumentNode | None
    """The parsed document; None when the text does not parse."""
    errors: tuple[GraphQLError, ...]
    """Why it cannot run (each with `extensions.code`); empty when the document is valid."""

    @property
    def valid(self) -> bool:
        return not self.errors


class CheckedRequest(NamedTuple):
    """A request checked before it runs: its document, the operation to run, and the errors
    (with codes) that keep it from running, empty when it may run."""

    document: DocumentNode | None
    operation: OperationDefinitionNode | None
    errors: tuple[GraphQLError, ...]


class DocumentCache:
    """Parses and validates documents against one schema under its limits, once per text.

    Validation is graphql-core's specified rules (field merging in linear time) and Strawberry's
    own, plus the limits; parsing refuses a text above the length or token limit. Shared by
    every request: never mutate what it returns.
    """

    def __init__(
        self,
        schema: GraphQLSchema,
        limits: DocumentLimits | None = None,
        *,
        max_entries: int = DOCUMENT_CACHE_SIZE,
        max_tokens: int = DOCUMENT_CACHE_TOKENS,
        max_bytes: int = DOCUMENT_CACHE_BYTES,
        max_request_bytes: int = REQUEST_CACHE_BYTES,
    ) -> None:
        self.schema = schema
        self.limits = limits
        self.parse_options: dict[str, Any] = limits.parse_options if limits else {}
        self.extra_rules: tuple[type[ASTValidationRule], ...] = limits.rules if limits else ()
        if limits is not None:
            self.extra_rules = (*self.extra_rules, limits_rule(limits))
        self._rules = (*validation_rules(schema), *(limits.rules if limits else ()))
        self._hide_suggestions = limits is not None and not limits.suggestions
        self._cost_model = (
            CostModel(max_page_size=limits.max_page_size or 2**31)
            if limits is not None and limits.max_cost is not None
            else None
        )
        self._entries: LRU[str, CheckedDocument] = LRU(
            max_entries, max_bytes, max_weight=max_tokens
        )
        self._requests: LRU[tuple[str, str | None, bytes], CheckedRequest] = LRU(
            REQUEST_CACHE_SIZE, max_request_bytes
        )

    def document(self, query: str) -> CheckedDocument:
        """`query` parsed and validated: from the cache, else checked now and kept."""
        checked = self._entries.get(query)
        if checked is None:
            checked = self._check(query)
            tokens = _token_count(checked.document)
            self._entries.put(query, checked, document_bytes(query, tokens), tokens)
        return checked

    def request(
        self, query: str, operation_name: str | None, variables: Mapping[str, Any] | None
    ) -> CheckedRequest:
        """`query` checked, then the operation it runs with `variables`: exactly one named or
        alone, variables that coerce (their errors without suggestions while introspection is
        off) and an estimated cost within the limit. Kept per distinct request."""
        try:
            key = (query, operation_name, orjson.dumps(variables, option=orjson.OPT_SORT_KEYS))
        except (TypeError, orjson.JSONEncodeError):
            return self._check_request(query, operation_name, variables or {})
        checked = self._requests.get(key)
        if checked is None:
            checked = self._check_request(query, operation_name, variables or {})
            self._requests.put(key, checked, _request_bytes(*key))
        return checked

    def __len__(self) -> int:
        return len(self._entries)

    def _check(self, query: str) -> CheckedDocument:
        try:
            document = parse(query, **self.parse_options)
        except GraphQLError as error:
            return CheckedDocument(None, (classify_error(error),))
        except RecursionError:
            message = "the document nests too deeply to be parsed"
            return CheckedDocument(
                None, (GraphQLError(message, extensions={"code": QUERY_TOO_DEEP}),)
            )
        refused = limit_errors(document, self.limits) if self.limits is not None else []
        if any(_code(error) == TOO_MANY_SELECTIONS for error in refused):
            # Refused before any rule runs: the rules' work grows with the selections.
            return CheckedDocument(document, tuple(refused))
        # graphql-core's validate, called by the name Strawberry's own validation uses.
        errors = strawberry_schema.validate(  # type: ignore[attr-defined]
            self.schema, document, self._rules, hide_suggestions=self._hide_suggestions
        )
        return CheckedDocument(
            document, tuple(classify_error(error) for error in (*refused, *errors))
        )

    def _check_request(
        self, query: str, operation_name: str | None, variables: Mapping[str, Any]
    ) -> CheckedRequest:
        document, errors = self.document(query)
        if document is None or errors:
            return CheckedRequest(document, None, errors)
        operation = select_operation(document, operation_name)
        if isinstance(operation, GraphQLError):
            return CheckedRequest(document, None, (operation,))
        coerced = get_variable_values(
            self.schema,
            operation.variable_definitions or (),
            dict(variables),
            hide_suggestions=self._hide_suggestions,
        )
        if isinstance(coerced, list):
            return CheckedRequest(document, operation, tuple(map(classify_error, coerced)))
        if self._cost_model is not None and self.limits is not None:
            assert self.limits.max_cost is not None
            fragments = {
                definition.name.value: definition
                for definition in document.definitions
                if isinstance(definition, FragmentDefinitionNode)
            }
            cost = operation_cost(self.schema, fragments, operation, coerced, self._cost_model)
            if cost > self.limits.max_cost:
                return CheckedRequest(
                    document, operation, (cost_error(cost, self.limits.max_cost),)
                )
        return CheckedRequest(document, operation, ())


def select_operation(
    document: DocumentNode, operation_name: str | None
) -> OperationDefinitionNode | GraphQLError:
    """The operation a request runs: the one named, or the only one. A document of several
    operations without a name is refused rather than running one of them."""
    operations = [
        definition
        for definition in document.definitions
        if isinstance(definition, OperationDefinitionNode)
    ]
    if operation_name is None:
        if len(operations) == 1:
            return operations[0]
        names = ", ".join(op.name.value for op in operations if op.name) or "none named"
        return GraphQLError(
            f"{OPERATION_NAME_REQUIRED}: it holds {len(operations)} operations ({names})",
            extensions={"code": "BAD_REQUEST"},
        )
    for operation in operations:
        if operation.name is not None and operation.name.value == operation_name:
            return operation
    return GraphQLError(
        f"unknown operation named {operation_name!r}", extensions={"code": "BAD_REQUEST"}
    )


def limits_rule(limits: DocumentLimits) -> type[ASTValidationRule]:
    """The depth, alias and selection limits as a validation rule, for a document validated
    elsewhere than in a DocumentCache."""

    class DocumentLimitsRule(ValidationRule):
        def __init__(self, context: ValidationContext) -> None:
            super().__init__(context)
            for error in limit_errors(context.document, limits):
                context.report_error(error)

    return DocumentLimitsRule


class CachedDocuments(SchemaExtension):
    """Strawberry's parse and validate steps, served from the schema's DocumentCache.

    A text that does not parse is left to Strawberry, which parses it again under the same
    limits and reports the same error (only valid and invalid-but-parsed documents are worth
    keeping a tree of). A document set by someone else is validated by Strawberry, with the
    limit rules added. A valid document is then checked as a request (the operation it runs, its
    variables, its cost) before anything executes.
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
        cache = self._cache()
        if checked is not None and context.graphql_document is checked.document:
            # Strawberry validates only while pre_execution_errors is None.
            context.pre_execution_errors = list(checked.errors)
            if checked.valid and cache is not None and context.query:
                # The name the request gave: Strawberry's `operation_name` falls back to the
                # first operation's, which would run one of several operations unasked.
                name = getattr(context, "_provided_operation_name", context.operation_name)
                request = cache.request(context.query, name, context.variables)
                context.pre_execution_errors = list(request.errors)
        elif cache is not None:
            context.validation_rules = (*context.validation_rules, *cache.extra_rules)
        yield


def _code(error: GraphQLError) -> Any:
    return (error.extensions or {}).get("code")


def document_bytes(query: str, tokens: DocumentNode | int | None) -> int:
    """What a document takes in memory, about: its text, and its parse at
    DOCUMENT_BYTES_PER_TOKEN a token (`tokens`: the parsed document, or its token count)."""
    count = tokens if isinstance(tokens, int) else _token_count(tokens)
    return text_bytes(query) + count * DOCUMENT_BYTES_PER_TOKEN


def _request_bytes(query: str, operation_name: str | None, variables: bytes) -> int:
    """What one entry of the request cache holds, about: its key, and its coerced variables
    (counted as their JSON once more) with the verdict's own objects."""
    return text_bytes(query, operation_name, variables) + len(variables) + 512


def _token_count(document: DocumentNode | None) -> int:
    """The lexical tokens of a parsed document (its weight in the cache); 1 without one."""
    count = 0
    token = document.loc.start_token if document is not None and document.loc else None
    while token is not None:
        count += 1
        token = token.next
    return max(count, 1)
