"""Executors whose per-event copies keep nothing after their event.

graphql-core memoizes `collect_subfields` by the identity of each execution's own field lists,
and keeps those lists alive with the entry so that no id is reused. A subscription's per-event
executors (`build_per_event_executor`, a shallow copy) share that memo with the executor they
come from, which lives as long as the subscription: every event would leave an entry behind,
with every list of it, for as long as the subscription runs (no entry is ever found again, the
next event's lists being new ones). Each event gets a memo of its own here, as in GraphQL.js,
and it goes with the event.

`EventExecutor` is the live hub's (a feed executes its selection once per item for all its
subscribers); `SchemaExecutionContext` is Strawberry's, for the subscriptions it runs itself
(over HTTP: graphql-sse and multipart).
"""

from __future__ import annotations

from typing import Any, TypeVar

from graphql.execution import Executor
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

E = TypeVar("E", bound=Executor[Any])


def with_own_memo(executor: E) -> E:
    """`executor` (a per-event copy) with an empty memo of its own."""
    executor._relevant_sub_fields = {}
    return executor


class EventExecutor(Executor[Any]):
    """graphql-core's executor, with a memo of collected subfields per event."""

    def build_per_event_executor(self, payload: Any) -> Executor[Any]:
        return with_own_memo(super().build_per_event_executor(payload))


class SchemaExecutionContext(StrawberryGraphQLCoreExecutionContext):
    """Strawberry's execution context, with a memo of collected subfields per event."""

    def build_per_event_executor(self, payload: Any) -> Executor[Any]:
        return with_own_memo(super().build_per_event_executor(payload))
