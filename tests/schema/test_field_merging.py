"""Field merging checked in linear time gives graphql-core's verdicts (its pairwise rule),
on generated documents over a schema with interfaces and unions, and stays linear on repeats."""

from __future__ import annotations

from typing import Any

from graphql import (
    GraphQLSchema,
    OverlappingFieldsCanBeMergedRule,
    build_schema,
    parse,
    validate,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schema.merging import FieldMerging, FieldsCanMergeRule

SDL = """
interface Pet { name: String friend(arg: Int): Pet size: Int }
type Dog implements Pet { name: String barks: Boolean friend(arg: Int): Pet size: Int tag: [Int] }
type Cat implements Pet { name: String meows: Boolean friend(arg: Int): Pet size: Int tag: Int! }
union Animal = Dog | Cat
type Query { pet: Pet pets: [Pet] animal: Animal dog: Dog cat: Cat n(arg: Int): Int }
"""
SCHEMA: GraphQLSchema = build_schema(SDL)
FIELDS = {
    "Query": ["pet", "pets", "animal", "dog", "cat", "n"],
    "Pet": ["name", "friend", "size", "__typename"],
    "Dog": ["name", "barks", "friend", "size", "tag"],
    "Cat": ["name", "meows", "friend", "size", "tag"],
    "Animal": ["__typename"],
}
COMPOSITE = {
    "pet": "Pet",
    "pets": "Pet",
    "animal": "Animal",
    "dog": "Dog",
    "cat": "Cat",
    "friend": "Pet",
}
CONDITIONS = {"Query": [], "Pet": ["Dog", "Cat", "Pet"], "Animal": ["Dog", "Cat"]}
CONDITIONS["Dog"] = ["Dog", "Pet"]
CONDITIONS["Cat"] = ["Cat", "Pet"]


def selections(type_name: str, depth: int) -> st.SearchStrategy[str]:
    def field(name: str) -> st.SearchStrategy[str]:
        alias = st.sampled_from(["", "a: ", "b: "])
        args = (
            st.sampled_from(["", "(arg: 1)", "(arg: 2)"])
            if name in ("friend", "n")
            else st.just("")
        )
        if name in COMPOSITE:
            if depth <= 0:
                return st.nothing()
            inner = selections(COMPOSITE[name], depth - 1)
            return st.builds(lambda a, g, s: f"{a}{name}{g} {{ {s} }}", alias, args, inner)
        return st.builds(lambda a, g: f"{a}{name}{g}", alias, args)

    options = [field(name) for name in FIELDS[type_name]]
    if depth > 0 and CONDITIONS[type_name]:
        options.append(
            st.sampled_from(CONDITIONS[type_name]).flatmap(
                lambda cond: selections(cond, depth - 1).map(lambda s: f"... on {cond} {{ {s} }}")
            )
        )
    return st.lists(st.one_of(options), min_size=1, max_size=4).map(" ".join)


def errors_of(rule: Any, document: str) -> list[str]:
    return [error.message for error in validate(SCHEMA, parse(document), [rule])]


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(selections("Query", 3))
def test_the_verdicts_are_graphql_cores(selection: str) -> None:
    document = f"{{ {selection} }}"
    stock = errors_of(OverlappingFieldsCanBeMergedRule, document)
    linear = errors_of(FieldsCanMergeRule, document)
    assert bool(linear) == bool(stock), (document, stock, linear)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(selections("Pet", 2), selections("Pet", 2))
def test_fragments_get_graphql_cores_verdicts_too(first: str, second: str) -> None:
    document = (
        "{ pet { ...A ...B } pets { ...B friend { ...A } } } "
        f"fragment A on Pet {{ {first} }} fragment B on Pet {{ {second} }}"
    )
    stock = errors_of(OverlappingFieldsCanBeMergedRule, document)
    linear = errors_of(FieldsCanMergeRule, document)
    assert bool(linear) == bool(stock), (document, stock, linear)


def test_conflicting_aliases_are_refused_with_graphql_cores_message() -> None:
    document = "{ dog { x: name x: barks } }"
    assert errors_of(FieldsCanMergeRule, document) == errors_of(
        OverlappingFieldsCanBeMergedRule, document
    )
    assert errors_of(FieldsCanMergeRule, "{ a: pet { name } a: dog { name } }")


class CountingMerging(FieldMerging):
    """Counts the fields collected, the measure of the rule's work."""

    collected = 0

    def _collect(self, owners: Any) -> Any:
        fields = super()._collect(owners)
        self.collected += sum(len(group) for group in fields.values())
        return fields


def collected_for(repeats: int) -> int:
    document = parse("{ " + " dog { friend(arg: 1) { name } }" * repeats + " }")
    operation = document.definitions[0]
    merging = CountingMerging(SCHEMA, {})
    assert merging.conflicts(SCHEMA.query_type, operation.selection_set) == []  # type: ignore[attr-defined]
    return merging.collected


def test_the_work_grows_linearly_with_repeated_fields() -> None:
    # graphql-core compares every pair: 100 repeats are 4,950 comparisons, 400 are 79,800.
    assert collected_for(400) <= 4 * collected_for(100) + 4
