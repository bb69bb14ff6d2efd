"""The kind of a quarantine reason, and a run's (or any set of) quarantined rows counted by kind.

A reason is the text a source or the pipeline gave when it set a row aside ("Close: no price
('null')"); it names the field and the value, so no two are alike. Its kind is a short stable
name for what went wrong ("missing_price"), to group and count by. Kinds are told apart by
phrases of the reason, matched in order (the first that matches wins): the same rules run in
Python (`reason_kind`) and in SQL (`kind_expression`), so rows can be filtered and counted by
kind in the database.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, String, case, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from server.tables import quarantine

OTHER = "other"


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of reason: its name, what it means, and the phrases that make a reason one.

    A phrase is a SQL LIKE pattern over the lower-cased reason (`%` for any text), written
    without `_` or a backslash so that it means the same in every database and in Python.
    """

    name: str
    meaning: str
    phrases: tuple[str, ...]

    def __post_init__(self) -> None:
        for phrase in self.phrases:
            if "_" in phrase or "\\" in phrase or phrase != phrase.lower():
                raise ValueError(f"phrase {phrase!r} of {self.name} must be lower case, no _ or \\")


KINDS: tuple[Kind, ...] = (
    Kind(
        "schema_drift",
        "held back because a field the source sends changed, see driftEvents",
        ("%schema drift%",),
    ),
    Kind("duplicate", "the same observation came twice", ("%duplicate%",)),
    Kind(
        "control_characters", "text with control characters", ("%control character%", "%nul byte%")
    ),
    Kind("future_date", "a time in the future", ("%in the future%", "%from the future%")),
    Kind(
        "bad_layout",
        "the file's columns could not be read as prices",
        ("%cannot map columns%", "%no header line%"),
    ),
    Kind("bad_row", "a row with more cells than its header", ("%row has % cells%",)),
    Kind("missing_asset", "no coin named, no symbol or name", ("%no asset%",)),
    Kind("not_usd", "a price not in US dollars", ("%not usd%", "%no usd quote%")),
    Kind(
        "missing_price",
        "no price, or an empty one",
        ("%: no price%", "%price: missing%"),
    ),
    Kind(
        "missing_date",
        "no time of observation, or an empty one",
        ("%: no time%", "%time%: missing%", "%date%: missing%", "%updated%: missing%"),
    ),
    Kind("negative_number", "a price, volume or market cap below zero", ("%is negative%",)),
    Kind("non_positive_price", "a price of zero or below", ("%is not positive%",)),
    Kind(
        "bad_number",
        "a number that is not one: text, infinity, a boolean",
        ("%not a number%", "%not a finite number%", "%expected a number%"),
    ),
    Kind(
        "bad_date",
        "a time that cannot be read, or without a time zone where one is needed",
        (
            "%not a recognised time%",
            "%not a recognized time%",
            "%no utc offset%",
            "%expected a time%",
            "%not a valid date%",
        ),
    ),
    Kind("missing_field", "a required field is absent", ("%: missing%",)),
)
KIND_NAMES = (*(kind.name for kind in KINDS), OTHER)
KINDS_DESCRIPTION = (
    "What went wrong, from the reason. "
    + "; ".join(f"{kind.name}: {kind.meaning}" for kind in KINDS)
    + f"; {OTHER}: anything else."
)
KIND_LIST = f"One of {', '.join(KIND_NAMES)} (see QuarantinedRecord.kind)."

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _regex(phrase: str) -> re.Pattern[str]:
    return re.compile(".*".join(map(re.escape, phrase.split("%"))), re.DOTALL)


_MATCHERS = tuple((kind.name, tuple(_regex(p) for p in kind.phrases)) for kind in KINDS)


def reason_kind(reason: str) -> str:
    """The kind of a quarantine reason (`other` when no kind's phrase is in it)."""
    # ASCII only, as SQLite's lower(): the phrases are ASCII, so nothing else could match.
    text = reason.translate(_ASCII_LOWER)
    for name, patterns in _MATCHERS:
        if any(pattern.fullmatch(text) for pattern in patterns):
            return name
    return OTHER


def kind_expression(reason: ColumnElement[str]) -> ColumnElement[str]:
    """`reason_kind` of a column, in SQL."""
    lowered = func.lower(reason, type_=String)
    whens = [(or_(*(lowered.like(p) for p in kind.phrases)), kind.name) for kind in KINDS]
    return case(*whens, else_=literal(OTHER, String))


@dataclass(slots=True)
class ReasonGroup:
    """The quarantined rows of one kind: how many, and the first few (quarantine rows)."""

    kind: str
    count: int
    examples: list[Any] = field(default_factory=list)


async def reason_groups(
    conn: AsyncConnection, where: Sequence[ColumnElement[bool]], *, examples: int
) -> list[ReasonGroup]:
    """The rows matching `where` counted by kind, most first, each with its first `examples`
    rows (in the order they were set aside); one statement."""
    classified = (
        select(quarantine, kind_expression(quarantine.c.reason).label("kind"))
        .where(*where)
        .subquery("classified")
    )
    ranked = select(
        classified,
        func.row_number()
        .over(partition_by=classified.c.kind, order_by=classified.c.id)
        .label("position"),
        func.count().over(partition_by=classified.c.kind).label("total"),
    ).subquery("ranked")
    query = (
        select(ranked)
        .where(ranked.c.position <= max(examples, 1))
        .order_by(ranked.c.total.desc(), ranked.c.kind, ranked.c.position)
    )
    groups: dict[str, ReasonGroup] = {}
    for row in (await conn.execute(query)).all():
        group = groups.get(row.kind)
        if group is None:
            group = groups[row.kind] = ReasonGroup(row.kind, int(row.total))
        if row.position <= examples:
            group.examples.append(row)
    return list(groups.values())


async def run_reasons(conn: AsyncConnection, run_id: int, *, examples: int) -> list[ReasonGroup]:
    """What one run quarantined, counted by kind (see `reason_groups`)."""
    return await reason_groups(conn, [quarantine.c.run_id == run_id], examples=examples)
