"""Source names: the built-in and installed sources, and the datasets of a source family
(`csv:<dataset>`).

The installed sources are the `kasparro.sources` entry points (docs/sources.md): their names are
read from the distributions' metadata here, without importing any plugin, so settings and the
schema accept a plugin's name while the core imports nothing of `workers`.

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
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points

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


# ---- installed sources: the `kasparro.sources` entry points, read as metadata only ----

ENTRY_POINT_GROUP = "kasparro.sources"
# The distribution whose entry points are the built-in sources.
OWN_DISTRIBUTION = "kasparro"
# The built-in sources prices are stored under (the defaults of KASPARRO_SOURCES). The
# built-in `coingecko-history` is a way to run `coingecko`, stored under it.
BUILTIN_SOURCES = ("coingecko", "coinpaprika", "csv")
# The built-in exchange sources: streams (WebSocket, with REST catch-up), enabled by naming them
# in KASPARRO_SOURCES.
EXCHANGE_SOURCES = ("binance", "coinbase", "kraken")
BUILTIN_NAMES = (*BUILTIN_SOURCES, "coingecko-history", *EXCHANGE_SOURCES)
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]*")


@dataclass(frozen=True, slots=True)
class SourceEntryPoint:
    """One entry point of the `kasparro.sources` group, as its distribution's metadata says
    (nothing of it is imported): `name = module:attribute` of `distribution` `version`."""

    name: str
    value: str
    distribution: str
    version: str

    @property
    def builtin(self) -> bool:
        return _normalized(self.distribution) == OWN_DISTRIBUTION

    def describe(self) -> str:
        """`example = kasparro_source_example:plugin` of kasparro-source-example 0.1.0."""
        return f"entry point {self.name!r} ({self.value}) of {self.distribution} {self.version}"


@dataclass(frozen=True, slots=True)
class SourceEntryPoints:
    """The group's entry points: the usable ones by name, and why any other is left out."""

    usable: dict[str, SourceEntryPoint]
    problems: tuple[str, ...]

    @property
    def plugin_names(self) -> tuple[str, ...]:
        """Names of usable sources of other distributions, sorted."""
        return tuple(sorted(name for name, ep in self.usable.items() if not ep.builtin))


def _normalized(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


@cache
def source_entry_points() -> SourceEntryPoints:
    """The installed sources' entry points (cached for the process; `.cache_clear()`).

    A plugin's name must be a lowercase slug no built-in has and no other plugin has; one that
    is not is left out with a problem naming its distribution and entry point. The built-ins
    always stand, whatever else is installed."""
    usable: dict[str, SourceEntryPoint] = {}
    problems: list[str] = []
    found = [
        SourceEntryPoint(
            name=ep.name,
            value=ep.value,
            distribution=ep.dist.name if ep.dist is not None else "an unknown distribution",
            version=ep.dist.version if ep.dist is not None else "?",
        )
        for ep in entry_points(group=ENTRY_POINT_GROUP)
    ]
    for ep in sorted(found, key=lambda ep: not ep.builtin):
        if ep.builtin:
            usable[ep.name] = ep
            continue
        if ep.name in BUILTIN_NAMES or (ep.name in usable and usable[ep.name].builtin):
            problems.append(
                f"source plugin {ep.describe()} is left out: {ep.name!r} is a built-in source"
            )
        elif ep.name in usable:
            problems.append(
                f"source plugin {ep.describe()} is left out: {ep.name!r} is already installed "
                f"by {usable[ep.name].describe()}"
            )
        elif not NAME_PATTERN.fullmatch(ep.name) or len(ep.name) > MAX_SOURCE_LENGTH:
            problems.append(
                f"source plugin {ep.describe()} is left out: a source name is a lowercase slug "
                f"(a-z, 0-9, '-', '_') of at most {MAX_SOURCE_LENGTH} characters"
            )
        else:
            usable[ep.name] = ep
    return SourceEntryPoints(usable, tuple(problems))


def known_sources() -> tuple[str, ...]:
    """The sources a deployment may enable or filter by: the built-ins, then the installed
    plugins' (from metadata, without importing them)."""
    return (*BUILTIN_SOURCES, *EXCHANGE_SOURCES, *source_entry_points().plugin_names)
