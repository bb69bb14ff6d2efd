"""Alerts on failed runs, schema drift and anomalies, by webhook and email, de-duplicated."""

from workers.alerts.conditions import Alert, conditions_of, resolved_by
from workers.alerts.notifier import Notifier, build_notifier

__all__ = ["Alert", "Notifier", "build_notifier", "conditions_of", "resolved_by"]
