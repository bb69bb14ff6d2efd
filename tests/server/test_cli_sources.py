"""Source plugins as an operator installs them: the example package installed into a directory of
its own, seen by `kasparro sources` and ingested by `kasparro ingest example`, in subprocesses."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sqlite3
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from tests.support.database import migrate
from tests.support.live_server import kasparro_env

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "kasparro-source-example"
KASPARRO = [sys.executable, "-m", "server.cli"]

PRICES = [
    {"id": "bitcoin", "symbol": "BTC", "name": "Bitcoin", "price": "64000.5",
     "time": "2024-05-01T12:00:00Z"},
    {"id": "bitcoin", "symbol": "BTC", "name": "Bitcoin", "price": "64100.25",
     "time": "2024-05-01T13:00:00Z"},
    {"id": "ethereum", "symbol": "ETH", "name": "Ethereum", "price": "3100",
     "time": "2024-05-01T12:00:00Z"},
]  # fmt: skip

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example package installed (offline, no dependencies) into a directory of its own."""
    target = tmp_path_factory.mktemp("plugins")
    build = tmp_path_factory.mktemp("build")
    source = build / "kasparro-source-example"
    # pip builds in the source tree; a copy leaves the repository's example clean.
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    if importlib.util.find_spec("wheel") is not None:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
             "--target", str(target), str(source)],
            check=True, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    else:
        # Without `wheel` (setuptools < 70 builds wheels with it), what an install leaves: the
        # package's metadata (with its entry points), written by setuptools, and its module.
        subprocess.run(
            [sys.executable, "-c", "from setuptools import setup; setup()", "egg_info",
             "--egg-base", str(target)],
            cwd=source, check=True, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        shutil.copytree(source / "kasparro_source_example", target / "kasparro_source_example")
    return target


async def test_an_installed_plugin_is_listed_and_ingested_once(
    plugin_dir: Path, tmp_path: Path
) -> None:
    database = tmp_path / "kasparro.db"
    url = f"sqlite+aiosqlite:///{database}"
    await migrate(url)
    prices_file = tmp_path / "prices.json"
    prices_file.write_text(json.dumps(PRICES))
    env = kasparro_env(
        DATABASE_URL=url,
        PYTHONPATH=str(plugin_dir),
        KASPARRO_SOURCES="csv,example",
        KASPARRO_EXAMPLE_FILE=str(prices_file),
        COLUMNS="250",
    )

    def kasparro(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*KASPARRO, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=120, check=False,
        )  # fmt: skip

    listed = kasparro("sources")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    rows = {line.split()[0]: line for line in listed.stdout.splitlines() if line.strip()}
    assert "kasparro-source-example 0.1.0" in rows["example"]
    assert " yes " in rows["example"]
    assert "JSON file KASPARRO_EXAMPLE_FILE names" in rows["example"]
    assert " no " in rows["coingecko"]  # built-ins stand beside it, not enabled here

    first = kasparro("ingest", "example")
    assert first.returncode == 0, first.stdout + first.stderr
    second = kasparro("ingest", "example")
    assert second.returncode == 0, second.stdout + second.stderr

    with sqlite3.connect(database) as conn:
        stored = conn.execute(
            "SELECT a.symbol, p.source, p.observed_at, p.price_usd FROM prices p "
            "JOIN assets a ON a.id = p.asset_id ORDER BY a.symbol, p.observed_at"
        ).fetchall()
        runs = conn.execute(
            "SELECT source, status, fetched, inserted FROM etl_runs ORDER BY id"
        ).fetchall()
        (checkpoint,) = conn.execute(
            "SELECT state FROM checkpoints WHERE source = 'example'"
        ).fetchone()
    assert [(s, src, t[:19], Decimal(str(p))) for s, src, t, p in stored] == [
        ("BTC", "example", "2024-05-01 12:00:00", Decimal("64000.5")),
        ("BTC", "example", "2024-05-01 13:00:00", Decimal("64100.25")),
        ("ETH", "example", "2024-05-01 12:00:00", Decimal("3100")),
    ]
    assert runs == [("example", "succeeded", 3, 3), ("example", "succeeded", 0, 0)]
    assert json.loads(checkpoint) == {"watermark": "2024-05-01T13:00:00+00:00"}

    again = kasparro("sources")
    example_row = next(
        line for line in again.stdout.splitlines() if line.split()[:1] == ["example"]
    )
    assert "succeeded" in example_row
    assert "2024-05-01T13:00:00+00:00" in example_row


def test_without_the_plugin_its_name_is_unknown(tmp_path: Path) -> None:
    result = subprocess.run(
        [*KASPARRO, "ingest", "example"], cwd=tmp_path,
        env=kasparro_env(DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'k.db'}"),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "unknown source 'example'" in result.stderr
