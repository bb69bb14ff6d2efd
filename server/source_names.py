"""Source names: the fixed sources, and the datasets of a source family (`csv:<dataset>`).

Prices are stored under the source that produced them. An API source is one name
(`coingecko`); the CSV source reads files of many providers, so each file's rows are stored under
`csv:<dataset>`, the provider or dataset the file comes from (`csv:yahoo`, `csv:kaggle`). The
family name alone (`csv`) names every dataset of the family wherever sources are filtered.

A dataset is a lowercase slug `[a-z0-9][a-z0-9._-]*` of at most MAX_DATASET_LENGTH characters,
so that a whole source name fits MAX_SOURCE_LENGTH.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from sqlalchemy import ColumnElement, or_

MAX_SOURCE_LENGTH = 64
SEPARATOR = ":"
# Sources whose rows are stored per dataset.
FAMILIES = ("csv",)
MAX_DATASET_LENGTH = MAX_SOURCE_LENGTH - max(len(f) for f in FAMILIES) - len(SEPARATOR)
DATASET_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]*")


class BadDatasetName(ValueError):
    """A dataset name that is not a lowercase slug of at most MAX_DATASET_LENGTH characters."""


def check_dataset(name: str) -> str:
    """`name` when it is a valid dataset name; BadDatasetName saying why otherwise."""
    if not DATASET_PATTERN.fullmatch(name):
        raise BadDatasetName(
            f"dataset {name!r} is not a lowercase slug: it must start with a-z or 0-9 and hold "
            "only a-z, 0-9, '.', '_' and '-' (e.g. yahoo, kaggle, my-exchange)"
        )
    if len(name) > MAX_DATASET_LENGTH:
        raise BadDatasetName(
            f"dataset {name[:20]!r}... is {len(name)} characters long; at most "
            f"{MAX_DATASET_LENGTH} are allowed"
        )
    return name


def dataset_source(family: str, dataset: str) -> str:
    """The source name of a family's dataset: `csv:yahoo`."""
    if family not in FAMILIES:
        raise ValueError(f"{family!r} has no datasets; families: {', '.join(FAMILIES)}")
    return f"{family}{SEPARATOR}{check_dataset(dataset)}"


def family_of(source: str) -> str:
    """The family a source belongs to: `csv` for `csv:yahoo`; a plain source is its own."""
    return source.partition(SEPARATOR)[0]


def is_dataset_source(name: str) -> bool:
    """Whether `name` is written like a dataset of a family (`csv:<slug>`)."""
    family, separator, dataset = name.partition(SEPARATOR)
    return (
        bool(separator)
        and family in FAMILIES
        and DATASET_PATTERN.fullmatch(dataset) is not None
        and len(dataset) <= MAX_DATASET_LENGTH
    )


def selects(names: Collection[str], source: str) -> bool:
    """Whether a filter of source `names` selects prices stored under `source`: by its own
    name, or by its family's."""
    return source in names or family_of(source) in names


def families_in(names: Collection[str]) -> list[str]:
    """The family names among `names`, sorted."""
    return sorted(name for name in set(names) if name in FAMILIES)


def stored_under(column: ColumnElement[str], names: Collection[str]) -> ColumnElement[bool]:
    """SQL for rows stored under one of `names`, or under a dataset of a family among them
    (`csv` -> `source IN ('csv') OR source LIKE 'csv:%'`)."""
    chosen = sorted(set(names))
    conditions: list[ColumnElement[bool]] = [column.in_(chosen)]
    conditions += [column.startswith(family + SEPARATOR) for family in families_in(chosen)]
    return or_(*conditions)
