"""The source plugin contract: what a source declares, and how installed sources are found.

Every source, built-in or not, is a `SourcePlugin` registered under the `kasparro.sources`
entry-point group (docs/sources.md):

    [project.entry-points."kasparro.sources"]
    example = "kasparro_source_example:plugin"

The entry point names the source; it must resolve to a `SourcePlugin` (or a callable returning
one) with the same `name`. `build(runtime, options)` makes the `Source` one run drives
(`workers/sources/base.py`: `batches(checkpoint)` and `parse(item)`). The names are read from
metadata by the core (`server.source_names.source_entry_points`), so settings and the schema
accept a plugin without importing it; the plugin's module is imported only here, when a run or
`kasparro sources` needs it. A plugin that clashes with a built-in or fails to load is left out
with an error naming its distribution and entry point; the built-ins always stand.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, Protocol

from server.settings import Settings
from server.source_names import (
    BUILTIN_NAMES,
    ENTRY_POINT_GROUP,
    OWN_DISTRIBUTION,
    SourceEntryPoint,
    source_entry_points,
)
from workers.sources.base import Batch, ExpectedField, Source

if TYPE_CHECKING:
    from workers.runtime import Runtime

__all__ = [
    "ENTRY_POINT_GROUP",
    "InstalledSource",
    "PluginError",
    "RateLimit",
    "SourcePlugin",
    "StreamHook",
    "UnknownSourceError",
    "get_plugin",
    "installed_sources",
]


class UnknownSourceError(ValueError):
    """The name is no installed source's."""


class PluginError(RuntimeError):
    """An installed source cannot be used: the message names its distribution and entry point."""


@dataclass(frozen=True, slots=True)
class RateLimit:
    """How fast a source may call its upstream: a token bucket of `burst` calls refilled at
    `per_minute` a minute, shared by every process of a deployment when Redis is configured.

    `per_minute` is a number, or a function of the settings for a limit an operator sets
    (`KASPARRO_COINGECKO_CALLS_PER_MINUTE`). `bucket` names the limiter in
    `runtime.limiters` (default: the source's name); sources calling one upstream share one.
    """

    per_minute: float | Callable[[Settings], float]
    burst: int = 1
    bucket: str = ""

    def calls_per_minute(self, settings: Settings) -> float:
        value = self.per_minute(settings) if callable(self.per_minute) else self.per_minute
        if value <= 0:
            raise ValueError(f"a rate limit must be above 0 calls per minute, got {value}")
        return float(value)


class StreamHook(Protocol):
    """A source that follows its upstream live (an exchange's WebSocket) declares `stream`:
    an async iterator of batches as they arrive, resuming after `checkpoint` (the last one
    committed, None the first time). The stream runner (`workers/streams/`) drives it in the
    worker and in `kasparro up`, one owner per source across processes: it gathers the batches
    into micro-batches, parses their items with the built `Source`'s `parse`, and commits the
    observations with the last batch's checkpoint in one transaction. `options` holds
    `stream=True` (and whatever the runner shares, such as `rates`)."""

    def __call__(
        self, runtime: Runtime, options: Mapping[str, Any], checkpoint: Mapping[str, Any] | None
    ) -> AsyncIterator[Batch]: ...


# `options` a source is built with: what `kasparro ingest` was given (`file`, `asset`, `days`,
# `symbol`, `name`, `dataset`), only those set.
Build = Callable[["Runtime", Mapping[str, Any]], Source]


@dataclass(frozen=True, slots=True)
class SourcePlugin:
    """What a source declares.

    name          the source's name (a lowercase slug): KASPARRO_SOURCES, `kasparro ingest NAME`,
                  and what its runs, prices, raw records and checkpoints are stored under
    description   one line for `kasparro sources`
    build         (runtime, options) -> Source: a configured source for one run, reading its
                  settings (runtime.settings, or its own variables), HTTP client
                  (runtime.client) and limiter (runtime.limiters[...])
    settings      the variables it reads (shown in docs and `kasparro sources`)
    checkpoint    the checkpoint's shape, in words: what a `Batch.checkpoint` holds and what
                  a run resumes from
    expected_fields  the fields its items carry, compared with what arrives (drift); the same
                  as its Source class's `expected_fields`
    rate_limit    how fast it may call its upstream; None: no limiter (files, local reads)
    stream        the live hook (`StreamHook`); None for a source that is only fetched in runs
    stored_as     the source name its rows are stored under when not `name` (a way to run
                  another source, as `coingecko-history` runs `coingecko` for a past window)
    """

    name: str
    description: str
    build: Build
    settings: tuple[str, ...] = ()
    checkpoint: str = ""
    expected_fields: tuple[ExpectedField, ...] = ()
    rate_limit: RateLimit | None = None
    stream: StreamHook | None = None
    stored_as: str = ""

    @property
    def source(self) -> str:
        """The source name its rows are stored under."""
        return self.stored_as or self.name

    @property
    def limiter_bucket(self) -> str:
        """Its key in `runtime.limiters` (only with a rate limit)."""
        return (self.rate_limit.bucket if self.rate_limit else "") or self.name


@dataclass(frozen=True, slots=True)
class InstalledSource:
    """One source of the registry: its plugin, or why it cannot be loaded."""

    entry_point: SourceEntryPoint
    plugin: SourcePlugin | None
    error: str | None = None

    @property
    def name(self) -> str:
        return self.entry_point.name


def _load(entry: SourceEntryPoint) -> SourcePlugin:
    """Import the entry point's object and check it is a SourcePlugin of the same name."""
    module_name, _, attribute = entry.value.partition(":")
    try:
        found: Any = importlib.import_module(module_name.strip())
        for part in attribute.strip().split(".") if attribute.strip() else ():
            found = getattr(found, part)
        if not isinstance(found, SourcePlugin) and callable(found):
            found = found()
    except Exception as exc:
        raise PluginError(
            f"source plugin {entry.describe()} failed to load: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(found, SourcePlugin):
        raise PluginError(
            f"source plugin {entry.describe()} is a {type(found).__name__}, not a SourcePlugin"
        )
    if found.name != entry.name:
        raise PluginError(
            f"source plugin {entry.describe()} declares the name {found.name!r}; the entry "
            "point and the plugin must name the source alike"
        )
    return found


def _builtin_entries() -> dict[str, SourceEntryPoint]:
    """The built-ins' entry points as pyproject.toml declares them: used when the installed
    metadata lacks one (a tree whose metadata predates it), so the built-ins never go missing."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        own_version = version(OWN_DISTRIBUTION)
    except PackageNotFoundError:
        own_version = "?"
    return {
        name: SourceEntryPoint(
            name=name,
            value=f"workers.sources.builtin:{name.replace('-', '_').upper()}",
            distribution=OWN_DISTRIBUTION,
            version=own_version,
        )
        for name in BUILTIN_NAMES
    }


@cache
def installed_sources() -> dict[str, InstalledSource]:
    """Every installed source by name, built-ins first, each loaded or with its load error
    (cached for the process; `installed_sources.cache_clear()` with the metadata's)."""
    found = source_entry_points()
    entries = _builtin_entries() | found.usable
    installed: dict[str, InstalledSource] = {}
    for name, entry in entries.items():
        try:
            installed[name] = InstalledSource(entry, _load(entry))
        except PluginError as exc:
            installed[name] = InstalledSource(entry, None, str(exc))
    return installed


def plugin_problems() -> tuple[str, ...]:
    """Why installed entry points are left out or unusable, one message each."""
    loading = tuple(s.error for s in installed_sources().values() if s.error is not None)
    return (*source_entry_points().problems, *loading)


def source_names() -> tuple[str, ...]:
    """The names `kasparro ingest` accepts: the built-ins, then the plugins, sorted."""
    return tuple(installed_sources())


def get_plugin(name: str) -> SourcePlugin:
    """The plugin of source `name`; UnknownSourceError for a name no source has, PluginError
    (naming the distribution and entry point) for one that cannot be loaded."""
    installed = installed_sources().get(name)
    if installed is None:
        problems = [p for p in source_entry_points().problems if f"entry point {name!r}" in p]
        if problems:
            raise PluginError(problems[0])
        raise UnknownSourceError(f"unknown source {name!r}; known: {', '.join(source_names())}")
    if installed.plugin is None:
        raise PluginError(installed.error or f"source {name!r} cannot be loaded")
    return installed.plugin


def usable_plugins() -> list[SourcePlugin]:
    """The plugins that loaded, built-ins first."""
    return [s.plugin for s in installed_sources().values() if s.plugin is not None]
