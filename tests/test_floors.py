"""The floors (pyproject.toml, [tool.importlinter]): the contract holds on this tree, every module
of `server/` is on a floor, and a wrong-way import anywhere breaks the contract."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("server", "schema", "workers")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on the packages of `tree`, with the contract of its pyproject.toml (the
    command puts its working directory first on the import path)."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def floors() -> list[set[str]]:
    """The modules named on each floor of the contract, top floor first."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (contract,) = config["tool"]["importlinter"]["contracts"]
    return [
        {name.strip().strip("()") for name in re.split(r"[|:]", layer)}
        for layer in contract["layers"]
    ]


def copy_of_the_packages(destination: Path) -> Path:
    """The Python files of the three packages and pyproject.toml, copied into `destination`."""

    def not_python(directory: str, names: list[str]) -> list[str]:
        return [
            name
            for name in names
            if name in ("__pycache__", "node_modules")
            or not (name.endswith(".py") or Path(directory, name).is_dir())
        ]

    for package in PACKAGES:
        shutil.copytree(ROOT / package, destination / package, ignore=not_python)
    shutil.copy(ROOT / "pyproject.toml", destination / "pyproject.toml")
    return destination


def test_the_tree_keeps_its_floors() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_ci_checks_the_floors_before_the_tests() -> None:
    """.ci/run stops at the first failing command, and lint-imports runs before pytest."""
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "set -euo pipefail" in lines
    assert lines.index(".venv/bin/lint-imports") < lines.index(".venv/bin/pytest")


def test_every_module_of_server_is_on_a_floor() -> None:
    named = set().union(*floors())
    children = {
        f"server.{path.stem if path.is_file() else path.name}"
        for path in (ROOT / "server").iterdir()
        if (path.suffix == ".py" and path.name != "__init__.py") or (path / "__init__.py").is_file()
    }
    assert children - named == set(), "put these on a floor in pyproject.toml"


def test_schema_and_workers_share_a_floor_above_the_core() -> None:
    top, middle, core = floors()
    assert middle == {"schema", "workers"}
    assert {"server.app", "server.cli"} <= top
    assert {"server.settings", "server.db", "server.tables", "server.broker"} <= core


@pytest.mark.parametrize(
    ("module", "imported"),
    [
        pytest.param("server/db.py", "schema.root", id="core-imports-schema"),
        pytest.param("server/tables.py", "workers.jobs", id="core-imports-workers"),
        pytest.param("server/broker/base.py", "server.app", id="core-imports-the-app"),
        pytest.param("schema/pagination.py", "workers.jobs", id="schema-imports-workers"),
        pytest.param("workers/jobs.py", "schema.root", id="workers-import-schema"),
        pytest.param("schema/inputs.py", "server.auth", id="schema-imports-the-assembly"),
    ],
)
def test_a_wrong_way_import_breaks_the_floors(tmp_path: Path, module: str, imported: str) -> None:
    tree = copy_of_the_packages(tmp_path)
    with (tree / module).open("a") as source:
        source.write(f"\nimport {imported}  # noqa: E402\n")
    importer = module.removesuffix(".py").replace("/", ".")

    result = lint_imports(tree)

    assert result.returncode != 0
    assert "BROKEN" in result.stdout
    assert f"{importer} -> {imported} (l." in result.stdout, result.stdout
