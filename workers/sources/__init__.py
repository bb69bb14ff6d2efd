"""The source registry: a name -> a configured Source.

Sources are plugins (`workers/sources/plugin.py`): the built-ins (`workers/sources/builtin.py`)
and any installed package's, all registered under the `kasparro.sources` entry-point group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from server.source_names import BUILTIN_NAMES
from workers.sources.plugin import (
    PluginError,
    SourcePlugin,
    UnknownSourceError,
    get_plugin,
    installed_sources,
    source_names,
)

if TYPE_CHECKING:
    from workers.runtime import Runtime
    from workers.sources.base import Source

# The built-in sources; `source_names()` adds the installed plugins'.
SOURCE_NAMES = BUILTIN_NAMES

__all__ = [
    "SOURCE_NAMES",
    "PluginError",
    "SourcePlugin",
    "UnknownSourceError",
    "build_source",
    "get_plugin",
    "installed_sources",
    "source_names",
]


def build_source(
    runtime: Runtime, name: str, *, path: str | None = None, options: dict[str, Any] | None = None
) -> Source:
    """A Source for `name`, configured from the runtime's settings. UnknownSourceError for a
    name no source has; PluginError for an installed source that cannot be loaded or built."""
    options = options or {}
    if options.get("dataset") is not None and name != "csv":
        raise ValueError(f"--dataset names a CSV file's dataset; {name!r} has none")
    coin_options = [key for key in ("asset", "symbol", "name", "days") if options.get(key)]
    if coin_options and name not in ("csv", "coingecko-history"):
        given = ", ".join(f"--{key}" for key in coin_options)
        raise ValueError(f"{given}: only for csv and coingecko-history, not {name!r}")
    plugin = get_plugin(name)
    build_options = {**options, **({"file": path} if path else {})}
    if plugin.rate_limit is not None and plugin.limiter_bucket not in runtime.limiters:
        raise PluginError(
            f"source {name!r} declares a rate limit but the runtime has no limiter "
            f"{plugin.limiter_bucket!r}"
        )
    try:
        return plugin.build(runtime, build_options)
    except (ValueError, PluginError):
        raise
    except Exception as exc:
        if name in BUILTIN_NAMES:
            raise
        entry = installed_sources()[name].entry_point
        raise PluginError(
            f"source plugin {entry.describe()} failed to build: {type(exc).__name__}: {exc}"
        ) from exc
