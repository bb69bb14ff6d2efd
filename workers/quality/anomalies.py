"""Run-level anomalies: a finished run's numbers against the same source's earlier runs.

Each metric (rows fetched, rows inserted, duration, error rate) is compared with the median of
the source's last `HISTORY_RUNS` finished runs, in units of the median absolute deviation (MAD,
scaled by 1.4826 to estimate a standard deviation; a robust z-score). Nothing is judged until the
source has `AnomalyRules.min_history` runs. A steady history has a MAD of 0, so the scale has a
floor per metric (a share of the median, and an absolute minimum): 1000 rows every run and then 999
is not an anomaly, 100 is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from statistics import median
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from server.tables import etl_runs
from workers.quality.store import insert_anomalies

if TYPE_CHECKING:
    from server.settings import Settings

HISTORY_RUNS = 50  # the earlier runs a run is compared with (most recent first)
MAD_TO_SIGMA = 1.4826  # MAD x this estimates the standard deviation of normal data
JUDGED_STATUSES = ("succeeded", "partial")  # failed runs are neither judged nor history
RunRow = Mapping[Any, Any]  # an etl_runs row as a mapping


@dataclass(frozen=True, slots=True)
class AnomalyRules:
    """Thresholds of the anomaly checks (from settings)."""

    min_history: int = 5  # earlier runs needed before a run is judged
    mad_threshold: float = 3.5  # robust z-score from which a run's number is an anomaly
    price_jump: float = 2.0  # a price this many times (or 1/this of) its previous observation
    divergence: float = 3.0  # a price this many times (or 1/this of) the other sources' median
    window_s: float = 3600.0  # other sources' observations this close in time are compared

    @classmethod
    def from_settings(cls, settings: Settings) -> AnomalyRules:
        return cls(
            min_history=settings.anomaly_min_history,
            mad_threshold=settings.anomaly_mad_threshold,
            price_jump=settings.anomaly_price_jump,
            divergence=settings.anomaly_divergence,
            window_s=settings.anomaly_window,
        )


@dataclass(frozen=True, slots=True)
class RunMetric:
    """One number of a run and how to judge it."""

    name: str
    value: Callable[[RunRow], float | None]
    two_sided: bool  # False: only a higher value is an anomaly
    relative_floor: float  # the scale is at least this share of the median...
    absolute_floor: float  # ...and at least this


def _duration(run: RunRow) -> float | None:
    started: datetime | None = run["started_at"]
    finished: datetime | None = run["finished_at"]
    if started is None or finished is None:
        return None
    return (finished - started).total_seconds()


def _error_rate(run: RunRow) -> float | None:
    fetched = int(run["fetched"])
    return int(run["quarantined"]) / fetched if fetched else None


RUN_METRICS: dict[str, RunMetric] = {
    metric.name: metric
    for metric in (
        RunMetric("fetched", lambda run: float(run["fetched"]), True, 0.05, 1.0),
        RunMetric("inserted", lambda run: float(run["inserted"]), True, 0.05, 1.0),
        RunMetric("duration", _duration, False, 0.1, 1.0),
        RunMetric("error_rate", _error_rate, False, 0.0, 0.01),
    )
}


def robust_score(value: float, history: Sequence[float], metric: RunMetric) -> tuple[float, float]:
    """(median of `history`, robust z-score of `value` against it)."""
    centre = median(history)
    mad = median(abs(x - centre) for x in history)
    scale = max(MAD_TO_SIGMA * mad, metric.relative_floor * abs(centre), metric.absolute_floor)
    return centre, (value - centre) / scale


async def check_run(
    conn: AsyncConnection, run: RunRow, rules: AnomalyRules, metrics: Sequence[str]
) -> list[dict[str, Any]]:
    """Record the anomalies of a finished run (its etl_runs row) and return them."""
    if run["status"] not in JUDGED_STATUSES or not metrics:
        return []
    history = (
        (
            await conn.execute(
                select(
                    etl_runs.c.fetched,
                    etl_runs.c.inserted,
                    etl_runs.c.quarantined,
                    etl_runs.c.started_at,
                    etl_runs.c.finished_at,
                )
                .where(
                    etl_runs.c.source == run["source"],
                    etl_runs.c.id < run["id"],
                    etl_runs.c.status.in_(JUDGED_STATUSES),
                    etl_runs.c.finished_at.is_not(None),
                )
                .order_by(etl_runs.c.id.desc())
                .limit(HISTORY_RUNS)
            )
        )
        .mappings()
        .all()
    )
    if len(history) < rules.min_history:
        return []
    found = []
    for name in metrics:
        metric = RUN_METRICS[name]
        value = metric.value(run)
        past = [x for x in map(metric.value, history) if x is not None]
        if value is None or len(past) < rules.min_history:
            continue
        centre, score = robust_score(value, past, metric)
        if score >= rules.mad_threshold or (metric.two_sided and -score >= rules.mad_threshold):
            found.append(
                {
                    "kind": f"run_{name}",
                    "value": _decimal(value),
                    "expected": _decimal(centre),
                    "score": round(score, 3),
                    "detail": {
                        "history_runs": len(past),
                        "mad": median(abs(x - centre) for x in past),
                        "threshold": rules.mad_threshold,
                    },
                }
            )
    await insert_anomalies(conn, run_id=int(run["id"]), source=run["source"], rows=found)
    return found


def _decimal(value: float) -> Decimal:
    return Decimal(repr(round(value, 6)))
