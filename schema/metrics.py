"""GraphQL operation metrics: count, latency and errors by operation name and type."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from strawberry.extensions import SchemaExtension

from server.metrics import Metrics


class OperationMetrics(SchemaExtension):
    """Records each operation in `metrics` once it has finished.

    Listed first among the schema's extensions so it runs last on the way out and sees the
    error codes ErrorPolicy assigned. Subscriptions are counted but not timed (their duration is
    the subscription's life, not a latency).
    """

    def __init__(self, *, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metrics = metrics

    def on_operation(self) -> Iterator[None]:
        started = time.perf_counter()
        yield
        elapsed = time.perf_counter() - started
        context = self.execution_context
        errors = list(getattr(context.result, "errors", None) or [])
        errors += [e for e in context.pre_execution_errors or [] if e not in errors]
        record_operation(
            self.metrics, context.operation_name, _operation_type(context), elapsed, errors
        )

    @classmethod
    def factory(cls, metrics: Metrics) -> Callable[[], OperationMetrics]:
        """A factory for `Schema(extensions=...)`: a fresh instance per operation."""

        def make() -> OperationMetrics:
            return cls(metrics=metrics)

        return make


def record_operation(
    metrics: Metrics, name: str | None, kind: str, elapsed: float, errors: list[Any]
) -> None:
    """Count one finished operation (and time it, unless it is a subscription)."""
    label = metrics.operation_label(name)
    metrics.child(metrics.graphql_operations, label, kind, "error" if errors else "ok").inc()
    if kind != "subscription":
        metrics.child(metrics.graphql_latency, label, kind).observe(elapsed)
    for error in errors:
        code = str((error.extensions or {}).get("code") or "UNKNOWN")
        metrics.graphql_errors.labels(label, kind, code).inc()


def _operation_type(context: Any) -> str:
    try:
        return str(context.operation_type.value)
    except (RuntimeError, KeyError, AttributeError, ValueError):
        # No document (a syntax error) or no operation of the requested name.
        return "unknown"
