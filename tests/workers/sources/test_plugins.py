"""The source registry: the built-ins are plugins of the `kasparro.sources` entry points, and an
installed plugin that clashes or fails to load is refused by name without touching them."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.settings import Settings, SettingsError
from server.source_names import known_sources, source_entry_points
from workers.runtime import source_limiters
from workers.sources import SOURCE_NAMES, PluginError, UnknownSourceError, get_plugin
from workers.sources.builtin import COINGECKO, COINPAPRIKA
from workers.sources.coingecko import CoinGeckoSource
from workers.sources.plugin import installed_sources, plugin_problems, source_names

PLUGIN_MODULE = """
from workers.sources.plugin import SourcePlugin

def build(runtime, options):
    raise RuntimeError("never built here")

good = SourcePlugin(name="good", description="A plugin that loads.", build=build)
clash = SourcePlugin(name="csv", description="Takes a built-in's name.", build=build)
named_otherwise = SourcePlugin(name="other", description="Not its entry point's name.", build=build)
"""

ENTRY_POINTS = """[kasparro.sources]
good = fake_sources:good
csv = fake_sources:clash
broken = fake_sources_missing:plugin
misnamed = fake_sources:named_otherwise
"""


def _clear() -> None:
    source_entry_points.cache_clear()
    installed_sources.cache_clear()


@pytest.fixture
def fake_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A distribution `fake-sources` 1.2 installed on the import path with four entry points."""
    info = tmp_path / "fake_sources-1.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-sources\nVersion: 1.2\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    (tmp_path / "fake_sources.py").write_text(PLUGIN_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    _clear()
    yield tmp_path
    monkeypatch.undo()
    sys.modules.pop("fake_sources", None)
    _clear()


def test_the_builtins_are_registered_plugins() -> None:
    assert source_names() == SOURCE_NAMES
    assert get_plugin("coingecko") is COINGECKO
    assert COINGECKO.expected_fields == CoinGeckoSource.expected_fields
    assert get_plugin("coingecko-history").source == "coingecko"
    assert all(s.entry_point.builtin and s.error is None for s in installed_sources().values())
    assert plugin_problems() == ()
    with pytest.raises(UnknownSourceError, match="unknown source 'nope'"):
        get_plugin("nope")


def test_limiters_are_built_from_the_declared_rate_limits() -> None:
    settings = Settings.load(_env_file=None, KASPARRO_COINGECKO_CALLS_PER_MINUTE="7")
    limiters = source_limiters(settings)
    assert sorted(limiters) == ["coingecko", "coinpaprika"]  # coingecko-history shares one
    assert COINGECKO.rate_limit is not None
    assert COINPAPRIKA.rate_limit is not None
    assert COINGECKO.rate_limit.calls_per_minute(settings) == 7
    assert COINPAPRIKA.rate_limit.calls_per_minute(settings) == 60


def test_a_plugin_is_known_to_settings_and_filters(fake_plugins: Path) -> None:
    assert "good" in known_sources()
    assert Settings.load(_env_file=None, KASPARRO_SOURCES="csv,good").sources == ["csv", "good"]
    with pytest.raises(SettingsError, match="unknown source"):
        Settings.load(_env_file=None, KASPARRO_SOURCES="csv,broken-name-nobody-has")
    assert get_plugin("good").description == "A plugin that loads."


def test_bad_plugins_are_refused_by_name_and_the_builtins_stand(fake_plugins: Path) -> None:
    problems = plugin_problems()
    assert any(
        "entry point 'csv' (fake_sources:clash) of fake-sources 1.2" in p
        and "is a built-in source" in p
        for p in problems
    ), problems
    with pytest.raises(PluginError, match=r"entry point 'broken' .* of fake-sources 1\.2 failed"):
        get_plugin("broken")
    with pytest.raises(PluginError, match=r"'misnamed' .* declares the name 'other'"):
        get_plugin("misnamed")
    # The built-in keeps its name and its plugin.
    csv = installed_sources()["csv"]
    assert csv.entry_point.builtin
    assert csv.plugin is not None
    assert csv.plugin.name == "csv"
    assert set(SOURCE_NAMES) <= set(source_names())
    assert get_plugin("coingecko") is COINGECKO
