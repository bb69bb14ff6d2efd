"""What deserves an alert in a finished run: its failure, its drift events, its anomalies.

Each alert has a condition key; the notifier sends one alert per key and channel per window.
Keys name the lasting condition, not the run: `run_failed:coingecko` stays the same key while
coingecko keeps failing, `drift:coingecko:current_price` while that field keeps drifting.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Alert:
    """One condition to report."""

    key: str  # e.g. run_failed:coingecko, drift:coingecko:current_price
    kind: str  # run_failed, drift, anomaly
    source: str
    title: str
    message: str
    run_id: int | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        """The JSON body of the webhook."""
        return {
            "key": self.key,
            "kind": self.kind,
            "source": self.source,
            "title": self.title,
            "message": self.message,
            "run_id": self.run_id,
            "details": self.details,
        }


def conditions_of(
    run: Mapping[str, Any],
    drift: Sequence[Mapping[str, Any]],
    anomalies: Sequence[Mapping[str, Any]],
) -> list[Alert]:
    """The alerts a finished run raises (none for a clean, successful run)."""
    alerts: list[Alert] = []
    source, run_id = str(run["source"]), int(run["id"])
    if run["status"] in ("failed", "abandoned"):
        error = str(run.get("error") or "no error recorded")
        ended = "failed" if run["status"] == "failed" else "was abandoned"
        alerts.append(
            Alert(
                key=f"run_failed:{source}",
                kind="run_failed",
                source=source,
                title=f"{source} ingestion failed",
                message=f"Run {run_id} of {source} {ended}: {error}",
                run_id=run_id,
                details={
                    "error": error,
                    "fetched": run.get("fetched"),
                    "trigger": run.get("trigger"),
                },
            )
        )
    alerts += _drift_alerts(source, run_id, drift)
    alerts += _anomaly_alerts(source, run_id, anomalies)
    return alerts


def resolved_by(run: Mapping[str, Any]) -> list[str]:
    """Condition keys a run ends: a run that did not fail ends `run_failed:<source>`, so the
    next failure is reported at once rather than after the window."""
    if run["status"] in ("succeeded", "partial"):
        return [f"run_failed:{run['source']}"]
    return []


def _drift_alerts(source: str, run_id: int, events: Sequence[Mapping[str, Any]]) -> list[Alert]:
    by_field: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for event in events:
        by_field[str(event["field"])].append(event)
    alerts = []
    for name, found in sorted(by_field.items()):
        changes = [
            {
                "kind": event["kind"],
                "matched_field": event.get("matched_field"),
                "confidence": event.get("confidence"),
                "action": event["action"],
            }
            for event in found
        ]
        described = ", ".join(f"{c['kind']} ({c['action']})" for c in changes)
        alerts.append(
            Alert(
                key=f"drift:{source}:{name}",
                kind="drift",
                source=source,
                title=f"{source} schema drift on {name}",
                message=f"Run {run_id} of {source} saw field {name!r} change: {described}",
                run_id=run_id,
                details={"field": name, "changes": changes},
            )
        )
    return alerts


def _anomaly_alerts(
    source: str, run_id: int, anomalies: Sequence[Mapping[str, Any]]
) -> list[Alert]:
    by_kind: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for anomaly in anomalies:
        by_kind[str(anomaly["kind"])].append(anomaly)
    alerts = []
    for kind, found in sorted(by_kind.items()):
        examples = [
            {
                "value": _text(a.get("value")),
                "expected": _text(a.get("expected")),
                "score": a.get("score"),
                "asset_id": a.get("asset_id"),
            }
            for a in found[:5]
        ]
        alerts.append(
            Alert(
                key=f"anomaly:{kind}:{source}",
                kind="anomaly",
                source=source,
                title=f"{source} anomaly: {kind}",
                message=f"Run {run_id} of {source} recorded {len(found)} {kind} anomalies",
                run_id=run_id,
                details={"anomaly": kind, "count": len(found), "examples": examples},
            )
        )
    return alerts


def _text(value: object) -> str | None:
    return None if value is None else str(value)
