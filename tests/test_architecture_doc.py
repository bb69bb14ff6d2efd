"""docs/architecture.md names only modules that exist, and draws every module of the floors.

The document's convention: a module is written as a code span (or, in the floors' diagram, a
word of a fenced block) that is either a path in the repository (`workers/pipeline/load.py`,
`server/broker/`, `server/web/static/dashboard.js`) or a dotted name (`server.broker.channels`,
optionally followed by a name the module defines: `server.broker.channels.publish`,
`schema.live.hub.LiveHub.join`).
"""

from __future__ import annotations

import ast
import re
import tomllib
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
TOP = r"(?:server|schema|workers|migrations|tests|bench)"
PATH = re.compile(rf"{TOP}/(?:[\w.-]+/)*[\w.-]*")
DOTTED = re.compile(rf"{TOP}(?:\.\w+)+")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
SPAN = re.compile(r"`([^`\n]+)`")
WORD = re.compile(rf"\b{TOP}[\w./-]*")


def mentions(text: str) -> set[str]:
    """Every module path or dotted name the document writes, by the convention above."""
    found: set[str] = set()
    for block in FENCE.findall(text):
        found |= {word.rstrip(".") for word in WORD.findall(block)}
    for span in SPAN.findall(FENCE.sub("", text)):
        if PATH.fullmatch(span) or DOTTED.fullmatch(span):
            found.add(span)
    return {name for name in found if PATH.fullmatch(name) or DOTTED.fullmatch(name)}


@cache
def defined_names(module: Path) -> frozenset[str]:
    """Names a module defines at its top level, and `Class.attribute` for its classes."""
    names: set[str] = set()
    for node in ast.parse(module.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    names.add(f"{node.name}.{item.name}")
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        names |= {target.id for target in targets if isinstance(target, ast.Name)}
    return frozenset(names)


def module_file(parts: list[str]) -> Path | None:
    base = ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def exists(name: str) -> bool:
    """Whether a mentioned path, module or module's name is in the tree."""
    if PATH.fullmatch(name):
        return (ROOT / name).exists()
    parts = name.split(".")
    for split in range(len(parts), 0, -1):
        module = module_file(parts[:split])
        if module is not None:
            rest = ".".join(parts[split:])
            return not rest or rest in defined_names(module)
    return False


def as_dotted(name: str) -> str:
    return name.removesuffix("/").removesuffix(".py").replace("/", ".")


def test_the_convention_finds_paths_and_dotted_names() -> None:
    text = (
        "`server/db.py`, `server/web/static/gqlws.js` and `server.broker.channels.publish`,"
        " not `kasparro up` nor `latestPrices`\n"
        "```\n core   server/settings.py  schema.root  (workers/)\n```\n"
    )
    assert mentions(text) == {
        "server/db.py",
        "server/web/static/gqlws.js",
        "server.broker.channels.publish",
        "server/settings.py",
        "schema.root",
        "workers/",
    }
    assert exists("server/db.py")
    assert exists("server.db.create_engine")
    assert not exists("server/nowhere.py")
    assert not exists("server.db.nothing_of_that_name")


def test_every_module_the_document_names_exists() -> None:
    named = mentions(DOC.read_text())
    assert len(named) > 30, "the document names modules as code spans or in its diagram"
    missing = sorted(name for name in named if not exists(name))
    assert missing == [], f"docs/architecture.md names what the tree does not have: {missing}"


def test_the_diagram_draws_every_module_of_the_floors() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (contract,) = config["tool"]["importlinter"]["contracts"]
    floors = {
        name.strip().strip("()")
        for layer in contract["layers"]
        for name in re.split(r"[|:]", layer)
    }
    diagram = set().union(*(mentions(block) for block in FENCE.findall(DOC.read_text())))
    drawn = {as_dotted(name) for name in diagram}
    assert floors - drawn == set(), "docs/architecture.md's diagram leaves these out"
