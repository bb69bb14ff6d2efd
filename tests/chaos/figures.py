"""The chaos suite's figures: each test records what it did and checked, and a run with
KASPARRO_CHAOS_REPORT=1 rewrites the figures block of docs/reliability.md from them.

Every test writes one JSON file into a directory all test processes of the session share (with
pytest-xdist, the parent of each worker's base temporary directory). Each process merges the
directory when its session ends, under a file lock, so the last to finish writes every figure.
"""

from __future__ import annotations

import fcntl
import json
import platform
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
REPORT_VARIABLE = "KASPARRO_CHAOS_REPORT"
START = "<!-- chaos-figures:start -->"
END = "<!-- chaos-figures:end -->"
DIRECTORY_NAME = "chaos-figures"

# Counted figures, summed over the tests: (key, what it counts).
COUNTS = (
    ("kills", "SIGKILLs of ingestion processes (`kasparro ingest`) mid-run"),
    ("worker_kills", "SIGKILLs of `kasparro worker` mid-run"),
    ("redis_restarts", "Redis restarts under running processes"),
    ("postgres_restarts", "PostgreSQL restarts (`-m fast`) under running processes"),
    ("upstream_faults", "upstream faults injected (429, 5xx, timeouts, malformed JSON)"),
    ("rows_checked", "stored prices checked against their input"),
    ("deliveries_checked", "subscription messages checked against the prices table"),
    ("queries_during_outages", "GraphQL queries answered while PostgreSQL restarted"),
    ("unavailable_answers", "of which answered SERVICE_UNAVAILABLE (the rest succeeded)"),
    ("duplicates", "duplicate prices or messages found"),
    ("lost", "prices or messages lost"),
)
# Measured durations, reported as the largest of any test (seconds).
DURATIONS = (
    ("recovery_seconds", "server answering again after PostgreSQL accepted connections"),
    ("postgres_outage_seconds", "PostgreSQL restart, stop to accepting connections"),
)


@dataclass
class Figures:
    """What one test did and checked."""

    test: str
    counts: dict[str, int] = field(default_factory=dict)
    durations: dict[str, list[float]] = field(default_factory=dict)
    outcome: str = "unknown"

    def add(self, key: str, amount: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + amount

    def measured(self, key: str, seconds: float) -> None:
        self.durations.setdefault(key, []).append(round(seconds, 3))

    def write(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^\w.-]+", "_", self.test)
        (directory / f"{name}.json").write_text(json.dumps(asdict(self), indent=1))


def directory(config: pytest.Config) -> Path:
    """The figures directory every test process of this session shares."""
    base: Path = config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    shared = base.parent if hasattr(config, "workerinput") else base
    return shared / DIRECTORY_NAME


def load(folder: Path) -> list[Figures]:
    found = []
    for path in sorted(folder.glob("*.json")):
        found.append(Figures(**json.loads(path.read_text())))
    return found


def render(figures: Iterable[Figures], *, when: datetime | None = None) -> str:
    """The figures block (Markdown): totals of the passed tests, then one line per test."""
    figures = sorted(figures, key=lambda f: f.test)
    passed = [f for f in figures if f.outcome == "passed"]
    moment = (when or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        START,
        f"Last chaos run: {moment}, {len(passed)} of {len(figures)} tests passed "
        f"(Python {platform.python_version()}, {platform.machine()}). Totals of the passed tests:",
        "",
        "| figure | value |",
        "|---|---|",
    ]
    for key, label in COUNTS:
        lines.append(f"| {label} | {sum(f.counts.get(key, 0) for f in passed)} |")
    for key, label in DURATIONS:
        values = [v for f in passed for v in f.durations.get(key, [])]
        shown = f"{max(values):.2f} s (worst of {len(values)})" if values else "not measured"
        lines.append(f"| {label} | {shown} |")
    lines += ["", "| test | outcome | figures |", "|---|---|---|"]
    for f in figures:
        parts = [f"{key} {value}" for key, value in sorted(f.counts.items())]
        parts += [
            f"{key} {', '.join(f'{v:.2f}' for v in values)}"
            for key, values in sorted(f.durations.items())
        ]
        lines.append(f"| `{f.test}` | {f.outcome} | {'; '.join(parts) or '-'} |")
    lines.append(END)
    return "\n".join(lines)


def rewrite(doc: Path, block: str) -> None:
    """Replace the block between the markers of `doc` with `block`."""
    text = doc.read_text()
    start, end = text.index(START), text.index(END) + len(END)
    doc.write_text(text[:start] + block + text[end:])


def merge_into_doc(folder: Path, doc: Path = DOC) -> None:
    """Rewrite the figures block of `doc` from every record in `folder` (under a lock)."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        records = load(folder)
        if records:
            rewrite(doc, render(records))
