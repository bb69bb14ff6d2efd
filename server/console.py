"""Terminal output of the operator commands: the ingestion progress bar and run tables."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from workers.pipeline.load import BatchOutcome

STATUS_STYLE = {"succeeded": "green", "partial": "yellow", "failed": "red", "running": "cyan"}
COUNTS = ("fetched", "inserted", "updated", "skipped", "quarantined")


@contextmanager
def ingest_progress(console: Console, source: str) -> Iterator[Any]:
    """A live line of counts, updated after every committed batch."""
    columns = (
        SpinnerColumn(),
        TextColumn(f"[bold]{source}[/]"),
        TextColumn("{task.fields[counts]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(source, total=None, counts="starting")

        def update(batch: BatchOutcome, totals: BatchOutcome) -> None:
            counts = "  ".join(f"{name} {getattr(totals, name):,}" for name in COUNTS)
            progress.update(task, counts=counts)

        yield update


def runs_table(rows: Sequence[Mapping[str, Any]], title: str = "ETL runs") -> Table:
    table = Table(title=title, title_justify="left")
    for name in ("run", "source", "trigger", "status", "started", "duration"):
        table.add_column(name, no_wrap=True)
    for name in COUNTS:
        table.add_column(name, justify="right")
    table.add_column("error", overflow="fold", max_width=60)
    for row in rows:
        status = str(row["status"])
        started, finished = row["started_at"], row["finished_at"]
        duration = f"{(finished - started).total_seconds():.1f}s" if finished else "-"
        table.add_row(
            str(row["id"]),
            row["source"],
            row["trigger"],
            f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]",
            started.strftime("%Y-%m-%d %H:%M:%S"),
            duration,
            *(f"{int(row[name]):,}" for name in COUNTS),
            row["error"] or "",
        )
    return table
