"""Terminal output of the operator commands: the ingestion progress bar, run tables, one run in
full, and what a run quarantined."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.measure import Measurement
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from schema.quality.quarantine import ReasonGroup
from workers.pipeline.outcome import BatchOutcome

STATUS_STYLE = {
    "succeeded": "green",
    "partial": "yellow",
    "failed": "red",
    "running": "cyan",
    "abandoned": "magenta",
}
COUNTS = ("fetched", "inserted", "updated", "skipped", "quarantined")
FIELDS = ("run", "source", "trigger", "status", "started", "duration", *COUNTS, "error")
ERROR_MIN_WIDTH = 20  # the error column wraps; the table needs at least this much for it
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


@contextmanager
def ingest_progress(console: Console, source: str) -> Iterator[Any]:
    """A live line of counts, updated after every committed batch; the last counts stay.

    The live line is transient, so a run that never got to a batch (an unknown source, a bad
    option) leaves only its error message behind.
    """
    columns = (
        SpinnerColumn(),
        TextColumn(f"[bold]{source}[/]"),
        TextColumn("{task.fields[counts]}"),
        TimeElapsedColumn(),
    )
    last: list[str] = []
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(source, total=None, counts="starting")

        def update(batch: BatchOutcome, totals: BatchOutcome) -> None:
            counts = "  ".join(f"{name} {getattr(totals, name):,}" for name in COUNTS)
            last[:] = [counts]
            progress.update(task, counts=counts)

        yield update
    if last:
        console.print(f"[bold]{source}[/] {last[0]}", highlight=False)


def runs_table(rows: Sequence[Mapping[str, Any]], title: str = "ETL runs") -> RunsTable:
    """The runs as one table, or one card per run where the table would not fit."""
    return RunsTable([_cells(row) for row in rows], title)


class RunsTable:
    """A table of runs when the console is wide enough for every count, else a card per run.

    A table squeezed below its width loses whole columns (rich shrinks them to nothing), and
    the counts are what the reader came for; a pipe gets 80 columns.
    """

    def __init__(self, rows: list[dict[str, Text]], title: str) -> None:
        self.rows = rows
        self.title = title

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        narrowest = self.table(error_width=ERROR_MIN_WIDTH)
        needed = Measurement.get(console, options.update_width(10_000), narrowest)
        if needed.maximum <= options.max_width:  # no_wrap columns need their full width
            yield self.table()
            return
        yield Text(self.title, style="italic")
        for row in self.rows:
            card = Table.grid(padding=(0, 2))
            card.add_column(style="bold", no_wrap=True)
            card.add_column(overflow="fold")
            for name in FIELDS:
                card.add_row(name, row[name])
            yield Text()
            yield card

    def table(self, *, error_width: int = 60) -> Table:
        table = Table(title=self.title, title_justify="left", box=box.SIMPLE_HEAD)
        for name in FIELDS[:6]:
            table.add_column(name, no_wrap=True)
        for name in COUNTS:
            table.add_column(name, justify="right", no_wrap=True)
        table.add_column("error", overflow="fold", max_width=error_width)
        for row in self.rows:
            table.add_row(*(row[name] for name in FIELDS))
        return table


def _cells(row: Mapping[str, Any]) -> dict[str, Text]:
    """Plain Text, not markup: an error message may hold brackets."""
    status = str(row["status"])
    started, finished = row["started_at"], row["finished_at"]
    values = {
        "run": str(row["id"]),
        "source": str(row["source"]),
        "trigger": str(row["trigger"]),
        "started": started.strftime(TIME_FORMAT),
        "duration": f"{(finished - started).total_seconds():.1f}s" if finished else "-",
        **{name: f"{int(row[name]):,}" for name in COUNTS},
        "error": str(row["error"] or ""),
    }
    cells = {name: Text(value) for name, value in values.items()}
    cells["status"] = Text(status, style=STATUS_STYLE.get(status, "white"))
    return cells


def quarantine_summary(groups: Sequence[ReasonGroup], *, run_id: int, top: int = 5) -> Group:
    """The most frequent kinds of quarantine reason of a run (one example each) and the command
    that shows them all: the end of `kasparro ingest`'s summary."""
    total = sum(group.count for group in groups)
    grid = _grid()
    for group in groups[:top]:
        example = group.examples[0] if group.examples else None
        shown = Text("e.g. ") + _example(example) if example is not None else Text("")
        grid.add_row(Text(group.kind), Text(f"{group.count:,}"), shown)
    parts: list[RenderableType] = [
        Text(),
        Text(f"Quarantined {total:,} row{'s' if total != 1 else ''}, by kind of reason:"),
        grid,
    ]
    rest = groups[top:]
    if rest:
        rows = sum(group.count for group in rest)
        parts.append(Text(f"and {len(rest)} more kind(s), {rows:,} row(s)."))
    parts.append(Text(f"Every row, with its reason and origin: kasparro runs --show {run_id}"))
    return Group(*parts)


def run_details(
    row: Mapping[str, Any], groups: Sequence[ReasonGroup], *, examples: int, graphql_url: str
) -> Group:
    """One run in full (`kasparro runs --show RUN`): what it did, where it left each stream,
    its error, and what it quarantined by kind with up to `examples` rows of each."""
    cells = _cells(row)
    finished = row["finished_at"]
    card = Table.grid(padding=(0, 2))
    card.add_column(style="bold", no_wrap=True)
    card.add_column(overflow="fold")
    for name in FIELDS:
        card.add_row(name, cells[name])
        if name == "started":
            card.add_row("finished", Text(finished.strftime(TIME_FORMAT) if finished else "-"))
    for name in ("checkpoint_before", "checkpoint_after", "details"):
        if row.get(name) is not None:
            card.add_row(name.replace("_", " "), Text(_json(row[name])))
    parts: list[RenderableType] = [Text(f"Run {row['id']}", style="italic"), card, Text()]
    if not groups:
        parts.append(Text("No rows quarantined."))
        return Group(*parts)
    total = sum(group.count for group in groups)
    parts.append(Text(f"Quarantined {total:,} row{'s' if total != 1 else ''}, by kind of reason:"))
    table = _grid()
    for group in groups:
        shown = group.examples[:examples]
        lines = [_example(example) for example in shown]
        if group.count > len(shown):
            lines.append(Text(f"… {group.count - len(shown):,} more", style="dim"))
        table.add_row(Text(group.kind), Text(f"{group.count:,}"), lines[0])
        for line in lines[1:]:
            table.add_row(Text(""), Text(""), line)
    parts += [table, Text()]
    query = (
        f'{{ quarantine(runId: "{row["id"]}", first: 100) '
        "{ nodes { origin reason kind record } pageInfo { hasNextPage endCursor } } }"
    )
    parts.append(
        Text(f"Every row, with the item as received, from the GraphQL API ({graphql_url}):")
    )
    parts.append(Text(query))
    return Group(*parts)


def _grid() -> Table:
    """kind, count, example: left-aligned columns (a reason wraps; the rest does not)."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(no_wrap=True)
    grid.add_column(justify="right", no_wrap=True)
    grid.add_column(overflow="fold")
    return grid


def _example(row: Any) -> Text:
    """A quarantined row as `origin  reason` (plain Text: a reason may hold brackets)."""
    return Text.assemble((str(row.origin), "cyan"), "  ", str(row.reason))


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def sources_table(rows: Sequence[Mapping[str, Any]], title: str = "Sources") -> Table:
    """`kasparro sources`: one row per installed source. A row holds name, origin (distribution
    and version), description, enabled, last_run (an etl_runs row or None), checkpoints
    (checkpoints rows) and error (why it cannot be loaded, or None)."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("source", no_wrap=True)
    table.add_column("from", no_wrap=True)
    table.add_column("enabled", no_wrap=True)
    table.add_column("last run", no_wrap=True)
    table.add_column("checkpoint", overflow="fold")
    table.add_column("description", overflow="fold")
    for row in rows:
        run = row.get("last_run")
        if run is None:
            last = Text("-")
        else:
            status = str(run["status"])
            last = Text(status, style=STATUS_STYLE.get(status, "white"))
            last.append(f" {run['started_at'].strftime(TIME_FORMAT)} (run {run['id']})")
        points = [
            f"{point['stream'] + ': ' if point['stream'] else ''}"
            f"{json.dumps(point['state'], sort_keys=True, default=str)}"
            for point in row.get("checkpoints") or []
        ]
        error = row.get("error")
        table.add_row(
            Text(str(row["name"])),
            Text(str(row["origin"])),
            Text("yes" if row["enabled"] else "no", style="green" if row["enabled"] else "dim"),
            last,
            Text("\n".join(points) or "-"),
            Text(str(error), style="red") if error else Text(str(row["description"])),
        )
    return table
