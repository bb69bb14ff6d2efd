"""Executors whose per-event copies keep nothing after their event.

graphql-core memoizes `collect_subfields` by the identity of each execution's own field lists,
and keeps those lists alive with the entry so that no id is reused. A subscription's per-event
executors (`build_per_event_executor`, a shallow copy) share that memo with the executor they
come from, which lives as long as the subscription: every event would leave an entry behind,
with every list of it, for as long as the subscription runs (no entry is ever found again, the
next event's lists being new ones). Each event gets a memo of its own here, as in GraphQL.js,
and it goes with the event.

They also settle the resolvers a failing sibling abandons. A field's async resolver runs as
soon as graphql-core asks for it, and its coroutine is awaited in a task of its own; when a
non-null sibling fails, the tasks still pending are cancelled (`gather_with_cancel`), and a task
cancelled before its first step never awaits the coroutine it was given. Each such coroutine
then reaches the garbage collector unawaited, and CPython warns about it from whichever frame the
collector interrupts (inside a namedtuple's constructor, whose frame has no builtins, the warning
itself fails and a traceback is logged instead: graphql-core issue 269). The executor's
`gather_with_cancel` is replaced here by one that, before it cancels a task that never began,
closes the coroutines that task holds unstarted: at once, in order, in a normal frame.

`EventExecutor` is the live hub's (a feed executes its selection once per item for all its
subscribers); `SchemaExecutionContext` is Strawberry's, for queries, mutations and the
subscriptions it runs itself (over HTTP: graphql-sse and multipart).
"""

from __future__ import annotations

from asyncio import FIRST_EXCEPTION, Future, Task, ensure_future, gather, wait
from collections.abc import Awaitable
from inspect import CORO_CREATED, getcoroutinestate
from types import CoroutineType
from typing import Any, TypeVar

from graphql.execution import Executor
from graphql.execution import executor as graphql_executor
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

E = TypeVar("E", bound=Executor[Any])


def close_unstarted(coroutine: object) -> None:
    """Close `coroutine` if it never began, and so every coroutine it holds that never began.

    What an unstarted coroutine holds is in its arguments and closure: a field's resolver
    (`complete_awaitable_value`'s `result`), a selection's fields (`get_results`' `results`), a
    list's items (`get_completed_results`' `completed_results`). Closing one that never began
    is silent, and runs none of its code."""
    pending = [coroutine]
    while pending:
        value = pending.pop()
        if type(value) is not CoroutineType:
            continue
        frame = value.cr_frame
        if frame is None or getcoroutinestate(value) != CORO_CREATED:  # begun or done
            continue
        for held in frame.f_locals.values():
            if type(held) is dict:
                pending.extend(held.values())
            elif type(held) is list or type(held) is tuple:
                pending.extend(held)
            else:
                pending.append(held)
        value.close()


async def gather_with_cancel(*awaitables: Awaitable[Any]) -> list[Any]:
    """graphql-core's `gather_with_cancel`, closing what the tasks it cancels never began.

    Their results in order; at the first failure the others are cancelled, and settled, before
    it is raised. The tasks are waited for with `asyncio.wait`, which leaves them alone when
    this task is cancelled (`asyncio.gather` would cancel them first, too soon to close what
    they hold)."""
    futures: list[Future[Any]] = [ensure_future(awaitable) for awaitable in awaitables]
    if not futures:
        return []
    try:
        await wait(futures, return_when=FIRST_EXCEPTION)
    except BaseException:  # this task was cancelled: so are the ones it waits for
        cancel(futures)
        raise
    failed = next(
        (f for f in futures if f.done() and not f.cancelled() and f.exception() is not None),
        None,
    )
    if failed is None:
        return [future.result() for future in futures]
    cancel(futures)
    await gather(*futures, return_exceptions=True)
    raise failed.exception()  # type: ignore[misc]


def cancel(futures: list[Future[Any]]) -> None:
    for future in futures:
        if not future.done():
            if isinstance(future, Task):
                close_unstarted(future.get_coro())
            future.cancel()


# The executor looks the function up in its module's namespace, for each selection and list.
if not hasattr(graphql_executor, "gather_with_cancel"):  # pragma: no cover - a new graphql-core
    raise ImportError("graphql.execution.executor no longer uses gather_with_cancel")
graphql_executor.gather_with_cancel = gather_with_cancel


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
