"""What arrived: the fields of a batch's items, how often each is there, and whether its values
can be read as the declared kind.

Paths are dotted ("quotes.USD.price"). Only objects that the source declares with children are
looked into; any other object is one field. A declared field is missing from an item when the
object that should hold it is there and the field is not (an absent parent is reported once, as
itself).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from workers.sources.base import ExpectedField, FieldKind
from workers.sources.normalize import to_decimal, to_utc


@dataclass(slots=True)
class FieldStats:
    """One path as seen across a batch."""

    present: int = 0  # items that have it (null included)
    kinds: Counter[str] = field(default_factory=Counter)  # JSON kinds of its non-null values
    unreadable: int = 0  # declared fields: values that are not of the declared kind


@dataclass(slots=True)
class Shape:
    """A batch's fields: every path seen, and the declared paths missing from some items."""

    items: int
    fields: dict[str, FieldStats]
    missing: dict[str, int]  # declared path -> items whose parent object lacks it

    def new_fields(self, declared: Mapping[str, ExpectedField]) -> list[str]:
        """Paths that arrived and are not declared, in order of first sight."""
        return [path for path in self.fields if path not in declared]


def parent_of(path: str) -> str:
    """'quotes.USD.price' -> 'quotes.USD'; a top-level field's parent is ''."""
    return path.rpartition(".")[0]


def leaf_of(path: str) -> str:
    """'quotes.USD.price' -> 'price'."""
    return path.rpartition(".")[2]


def node_at(payload: Mapping[str, Any], parent: str) -> Mapping[str, Any] | None:
    """The object at `parent` ("" is the payload itself), or None when there is none."""
    node: Any = payload
    if parent:
        for key in parent.split("."):
            node = node.get(key) if isinstance(node, Mapping) else None
    return node if isinstance(node, Mapping) else None


def json_kind(value: object) -> str:
    """The JSON kind of a decoded value: null, boolean, number, text, object or array."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


def readable(value: object, kind: FieldKind) -> bool:
    """Whether the pipeline can read `value` as `kind` (null always can: it is a missing value,
    which validation judges). Numbers and times accept what the normalizers accept."""
    if value is None or kind == "any":
        return True
    if kind == "number":
        if isinstance(value, bool):
            return False
        if isinstance(value, int | float):
            return True
        return _parses(lambda: to_decimal(value))
    if kind == "time":
        return not isinstance(value, bool) and _parses(lambda: to_utc(value, naive_is_utc=True))
    if kind == "text":
        return isinstance(value, str | int | float) and not isinstance(value, bool)
    if kind == "object":
        return isinstance(value, Mapping)
    if kind == "array":
        return isinstance(value, list | tuple)
    return isinstance(value, bool)  # "boolean"


def _parses(read: Any) -> bool:
    try:
        read()
    except ValueError:
        return False
    return True


class Observer:
    """Computes the `Shape` of batches against one declaration (built once per run)."""

    def __init__(self, expected: Sequence[ExpectedField]) -> None:
        self.declared = {spec.path: spec for spec in expected}
        children: dict[str, list[str]] = defaultdict(list)
        for spec in expected:
            children[parent_of(spec.path)].append(spec.path)
        self._children = dict(children)  # object path -> its declared child paths
        self._awaited = {  # object path -> the child paths whose absence is drift
            parent: [path for path in paths if not self.declared[path].may_be_absent]
            for parent, paths in children.items()
        }

    def observe(self, payloads: Sequence[Mapping[str, Any]]) -> Shape:
        """The shape of `payloads` (each an item as received)."""
        fields: dict[str, FieldStats] = {}
        missing: Counter[str] = Counter()
        for payload in payloads:
            self._walk(payload, "", fields, missing)
        return Shape(items=len(payloads), fields=fields, missing=dict(missing))

    def _walk(
        self,
        node: Mapping[str, Any],
        parent: str,
        fields: dict[str, FieldStats],
        missing: Counter[str],
    ) -> None:
        prefix = f"{parent}." if parent else ""
        for key, value in node.items():
            path = prefix + str(key)
            stats = fields.get(path)
            if stats is None:
                stats = fields[path] = FieldStats()
            stats.present += 1
            if value is not None:
                stats.kinds[json_kind(value)] += 1
            spec = self.declared.get(path)
            if spec is None:
                continue
            if not readable(value, spec.kind):
                stats.unreadable += 1
            elif path in self._children and isinstance(value, Mapping):
                self._walk(value, path, fields, missing)
        for path in self._awaited.get(parent, ()):
            if leaf_of(path) not in node:
                missing[path] += 1
