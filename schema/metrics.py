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
        name = self.metrics.operation_label(context.operation_name)
        kind = _operation_type(context)
        errors = list(getattr(context.result, "errors", None) or [])
        errors += [e for e in context.pre_execution_errors or [] if e not in errors]
        self.metrics.graphql_operations.labels(name, kind, "error" if errors else "ok").inc()
        if kind != "subscription":
            self.metrics.graphql_latency.labels(name, kind).observe(elapsed)
        for error in errors:
            code = str((error.extensions or {}).get("code") or "UNKNOWN")
            self.metrics.graphql_errors.labels(name, kind, code).inc()

    @classmethod
    def factory(cls, metrics: Metrics) -> Callable[[], OperationMetrics]:
        """A factory for `Schema(extensions=...)`: a fresh instance per operation."""

        def make() -> OperationMetrics:
            return cls(metrics=metrics)

        return make


def _operation_type(context: Any) -> str:
    try:
        return str(context.operation_type.value)
    except (RuntimeError, KeyError, AttributeError, ValueError):
        # No document (a syntax error) or no operation of the requested name.
        return "unknown"
