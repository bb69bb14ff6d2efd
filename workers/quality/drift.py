"""Schema drift: what a batch's items carry compared with the fields their source declares.

Every batch is compared: declared fields that are missing, fields that are new, and declared
fields whose values are of another kind (retyped). A missing field and a new field of the same
object may be one field renamed: each pair is scored (how alike the names are, with rapidfuzz;
whether the new field's values are of the declared kind; whether the new field is there exactly
where the declared one is not) and the best pairs are matched one to one. By the match's
confidence (`DriftRules`):

- at `automap_at` and above, the new name is read as the declared one (auto_mapped);
- from `quarantine_at` up to `automap_at`, items that have the new name and lack the declared one
  are held back, quarantined with the reason (quarantined);
- below `quarantine_at`, the match is ignored: the declared field is missing, the other is new.

An item that lacks a required field while its object has new fields is quarantined with the
reason too (the parser would refuse it without saying why). A run records each finding once
(`DriftGuard`); findings travel with their batch and are written in its transaction.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from rapidfuzz import fuzz

from workers.quality.fields import Observer, Shape, leaf_of, node_at, parent_of, readable
from workers.sources.base import (
    Batch,
    DriftFinding,
    ExpectedField,
    PriceRecord,
    RecordError,
    SourceItem,
)

if TYPE_CHECKING:
    from server.settings import Settings

Parse = Callable[[SourceItem], PriceRecord]


@dataclass(frozen=True, slots=True)
class DriftRules:
    """Confidence thresholds of a rename (0 to 1)."""

    automap_at: float = 0.8
    quarantine_at: float = 0.5

    @classmethod
    def from_settings(cls, settings: Settings) -> DriftRules:
        return cls(settings.drift_automap_at, settings.drift_quarantine_at)


def name_similarity(a: str, b: str) -> float:
    """How alike two field names are, 0 to 1, whatever their case style or word order:
    'currentPrice', 'price_current' and 'current_price' are alike (1.0)."""
    left, right = _words(a), _words(b)
    if not left or not right:
        return 0.0
    return max(fuzz.ratio(left, right), fuzz.token_sort_ratio(left, right)) / 100


def _words(name: str) -> str:
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name.strip())
    return " ".join(re.sub(r"[^0-9a-z]+", " ", spaced.lower()).split())


@dataclass(frozen=True, slots=True)
class Rename:
    """In the object at `parent`, the field arrived as `found` and is declared as `expected`
    (both leaf names)."""

    parent: str
    found: str
    expected: str

    def applies(self, payload: Mapping[str, Any]) -> bool:
        node = node_at(payload, self.parent)
        return node is not None and self.found in node and self.expected not in node


@dataclass(frozen=True, slots=True)
class Hold:
    """Items whose object at `parent` lacks `expected` (and has `found`, when given) are held
    back with `reason`."""

    parent: str
    expected: str
    found: str | None
    reason: str

    def applies(self, payload: Mapping[str, Any]) -> bool:
        node = node_at(payload, self.parent)
        if node is None or self.expected in node:
            return False
        return self.found is None or self.found in node


@dataclass(frozen=True, slots=True)
class DriftPlan:
    """What to do with a batch's items: renames to apply and holds to enforce."""

    renames: tuple[Rename, ...] = ()
    holds: tuple[Hold, ...] = ()

    def guard(self, parse: Parse) -> Parse:
        """`parse` with the plan applied: held items raise RecordError with the hold's reason,
        renamed fields are read under their declared names (the item itself is not changed)."""
        if not self.renames and not self.holds:
            return parse
        holds, renames = self.holds, self.renames

        def guarded(item: SourceItem) -> PriceRecord:
            payload = item.payload
            for hold in holds:
                if hold.applies(payload):
                    raise RecordError(hold.reason)
            applicable = [rename for rename in renames if rename.applies(payload)]
            if applicable:
                item = SourceItem(renamed(payload, applicable), item.origin)
            return parse(item)

        return guarded


def renamed(payload: Mapping[str, Any], renames: Sequence[Rename]) -> dict[str, Any]:
    """A copy of `payload` with each rename's field under its declared name (copying only the
    objects on the way)."""
    result = dict(payload)
    for rename in renames:
        node = result
        if rename.parent:
            for key in rename.parent.split("."):
                node[key] = dict(node[key])
                node = node[key]
        node[rename.expected] = node.pop(rename.found)
    return result


@dataclass(frozen=True, slots=True)
class _Match:
    expected: ExpectedField
    found: str  # full path
    confidence: float
    items: int  # items with `found` and without the declared field


class DriftDetector:
    """Compares batches with one source's declaration (built once per run)."""

    def __init__(self, expected: Sequence[ExpectedField], rules: DriftRules) -> None:
        self.observer = Observer(expected)
        self.declared = self.observer.declared
        self.rules = rules

    def inspect(self, items: Sequence[SourceItem]) -> tuple[list[DriftFinding], DriftPlan]:
        """The findings about `items` and the plan for parsing them."""
        payloads = [item.payload for item in items]
        shape = self.observer.observe(payloads)
        new = shape.new_fields(self.declared)
        matches = self._match(shape, new, payloads)
        origin = items[0].origin if items else ""
        findings: list[DriftFinding] = []
        renames: list[Rename] = []
        holds: list[Hold] = []
        matched = {m.expected.path: m for m in matches}
        for path, count in shape.missing.items():
            match = matched.get(path)
            spec = self.declared[path]
            if match is not None and match.confidence >= self.rules.quarantine_at:
                finding, rename, hold = self._renamed(match, shape.items, origin)
                findings.append(finding)
                renames += [rename] if rename else []
                holds += [hold] if hold else []
                continue
            held = spec.required and any(parent_of(p) == parent_of(path) for p in new)
            detail = {"items": count, "of": shape.items, "origin": origin}
            action = "quarantined" if spec.required else "recorded"
            findings.append(DriftFinding("missing", path, action, detail=detail))
            if match is not None:
                findings.append(self._ignored(match, shape.items, origin))
            if held:
                holds.append(self._unrecognised(spec, new, match))
        used = {m.found for m in matches}
        for path in new:
            if path not in used:
                detail = {"items": shape.fields[path].present, "of": shape.items, "origin": origin}
                findings.append(DriftFinding("new", path, "recorded", detail=detail))
        findings += self._retyped(shape, origin)
        return findings, DriftPlan(tuple(renames), tuple(holds))

    def _match(
        self, shape: Shape, new: list[str], payloads: Sequence[Mapping[str, Any]]
    ) -> list[_Match]:
        """The best one-to-one pairs (missing declared field, new field of the same object)."""
        scored: list[_Match] = []
        for path in shape.missing:
            spec = self.declared[path]
            for candidate in new:
                if parent_of(candidate) != parent_of(path):
                    continue
                similarity = name_similarity(leaf_of(candidate), leaf_of(path))
                if similarity == 0:
                    continue
                evidence, items = _evidence(payloads, spec, candidate)
                confidence = round(similarity * evidence, 3)
                if confidence > 0:
                    scored.append(_Match(spec, candidate, confidence, items))
        scored.sort(key=lambda m: (-m.confidence, m.expected.path, m.found))
        matches: list[_Match] = []
        taken: set[str] = set()
        for match in scored:
            if match.expected.path in taken or match.found in taken:
                continue
            taken.update((match.expected.path, match.found))
            matches.append(match)
        return matches

    def _renamed(
        self, match: _Match, total: int, origin: str
    ) -> tuple[DriftFinding, Rename | None, Hold | None]:
        path, found = match.expected.path, match.found
        detail = {
            "items": match.items,
            "of": total,
            "origin": origin,
            "automap_at": self.rules.automap_at,
            "quarantine_at": self.rules.quarantine_at,
        }
        parent = parent_of(path)
        if match.confidence >= self.rules.automap_at:
            rename = Rename(parent, leaf_of(found), leaf_of(path))
            finding = DriftFinding("renamed", found, "auto_mapped", path, match.confidence, detail)
            return finding, rename, None
        reason = (
            f"{path}: missing; schema drift: {found!r} may be it (confidence "
            f"{match.confidence:.2f}, auto-mapped from {self.rules.automap_at:.2f}): "
            "held for review"
        )
        hold = Hold(parent, leaf_of(path), leaf_of(found), reason)
        finding = DriftFinding("renamed", found, "quarantined", path, match.confidence, detail)
        return finding, None, hold

    def _ignored(self, match: _Match, total: int, origin: str) -> DriftFinding:
        detail = {
            "items": match.items,
            "of": total,
            "origin": origin,
            "quarantine_at": self.rules.quarantine_at,
        }
        path = match.expected.path
        return DriftFinding("new", match.found, "ignored", path, match.confidence, detail)

    def _unrecognised(self, spec: ExpectedField, new: list[str], match: _Match | None) -> Hold:
        siblings = [p for p in new if parent_of(p) == parent_of(spec.path)]
        shown = ", ".join(repr(p) for p in siblings[:5]) + (", …" if len(siblings) > 5 else "")
        best = (
            f"; best match {match.found!r} at confidence {match.confidence:.2f}, below "
            f"{self.rules.quarantine_at:.2f}"
            if match is not None
            else ""
        )
        reason = f"{spec.path}: missing; schema drift: new field(s) {shown} not recognised{best}"
        return Hold(parent_of(spec.path), leaf_of(spec.path), None, reason)

    def _retyped(self, shape: Shape, origin: str) -> list[DriftFinding]:
        findings = []
        for path, spec in self.declared.items():
            stats = shape.fields.get(path)
            if stats is None or not stats.unreadable:
                continue
            detail = {
                "expected": spec.kind,
                "seen": dict(stats.kinds),
                "items": stats.unreadable,
                "of": shape.items,
                "origin": origin,
            }
            action = "quarantined" if spec.required else "recorded"
            findings.append(DriftFinding("retyped", path, action, detail=detail))
        return findings


def _evidence(
    payloads: Sequence[Mapping[str, Any]], spec: ExpectedField, candidate: str
) -> tuple[float, int]:
    """How well the values of `candidate` stand in for `spec` (0 to 1), and in how many items:
    of the kind declared, present where the declared field is absent, absent where it is not."""
    parent, declared, found = parent_of(spec.path), leaf_of(spec.path), leaf_of(candidate)
    lacking = with_candidate = replacing = readable_values = 0
    for payload in payloads:
        node = node_at(payload, parent)
        if node is None:
            continue
        has_declared, has_candidate = declared in node, found in node
        lacking += not has_declared
        if has_candidate:
            with_candidate += 1
            readable_values += readable(node[found], spec.kind)
            replacing += not has_declared
    if not replacing:
        return 0.0, 0
    # Where the declared field is missing, the candidate is there; where the candidate is, the
    # declared field is not; and its values are of the declared kind.
    evidence = (replacing / lacking) * (replacing / with_candidate)
    return evidence * (readable_values / with_candidate), replacing


class DriftGuard:
    """One run's drift checks: inspects each batch, attaches the findings not yet recorded in
    this run, and wraps the parser with the batch's plan. Used by one thread at a time."""

    def __init__(self, expected: Sequence[ExpectedField], rules: DriftRules) -> None:
        self.detector = DriftDetector(expected, rules) if expected else None
        self._recorded: set[tuple[str, str, str | None, str, str]] = set()

    def prepare(self, batch: Batch, parse: Parse) -> tuple[Batch, Parse]:
        """The batch with the drift findings to record, and the parser to use for its items."""
        findings = list(batch.drift)
        plan = DriftPlan()
        if self.detector is not None and batch.items:
            found, plan = self.detector.inspect(batch.items)
            findings += found
        fresh = []
        for finding in findings:
            if finding.key not in self._recorded:
                self._recorded.add(finding.key)
                fresh.append(finding)
        if tuple(fresh) != batch.drift:
            batch = replace(batch, drift=tuple(fresh))
        return batch, plan.guard(parse)
