"""A subscription's events leave nothing behind in the executor that outlives them: the live
hub's feeds (EventExecutor) and Strawberry's own subscriptions (SchemaExecutionContext)."""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import AsyncGenerator

import pytest
import strawberry
from graphql import build_schema as build_sdl
from graphql import parse
from graphql.execution import Executor, execute_subscription_event
from graphql.execution.collect_fields import FieldDetails

from schema.execution import EventExecutor, SchemaExecutionContext
from schema.root import build_schema

SDL = """
type Query { a: Int }
type Point { id: Int, at: Where }
type Where { x: Int, y: Int }
type Subscription { point: Point }
"""
DOCUMENT = parse("subscription { point { id at { x y } } }")
EVENTS = 100


def run_events(executor: Executor) -> None:  # type: ignore[type-arg]
    for number in range(EVENTS):
        event = {"point": {"id": number, "at": {"x": number, "y": -number}}}
        result = execute_subscription_event(executor.build_per_event_executor(event))
        assert result.data == {"point": {"id": number, "at": {"x": number, "y": -number}}}  # type: ignore[union-attr]


def test_graphql_cores_per_event_copies_share_a_memo_that_grows_with_every_event() -> None:
    # The behaviour the executors below correct: were it gone, they could go too.
    executor = Executor.build(build_sdl(SDL), DOCUMENT)
    assert not isinstance(executor, list)
    run_events(executor)
    assert len(executor._relevant_sub_fields) >= EVENTS


def test_an_event_executor_keeps_nothing_after_its_events() -> None:
    executor = EventExecutor.build(build_sdl(SDL), DOCUMENT)
    assert isinstance(executor, EventExecutor)
    run_events(executor)
    assert executor._relevant_sub_fields == {}


def live_field_details() -> int:
    gc.collect()
    return sum(isinstance(obj, FieldDetails) for obj in gc.get_objects())


@strawberry.type
class Where:
    x: int
    y: int


@strawberry.type
class Point:
    id: int
    at: Where


@strawberry.type
class Query:
    a: int = 0


@strawberry.type
class Subscription:
    @strawberry.subscription
    async def point(self) -> AsyncGenerator[Point, None]:
        for number in range(10 * EVENTS):
            yield Point(id=number, at=Where(x=number, y=-number))


async def test_a_strawberry_subscription_keeps_nothing_per_event_while_it_runs() -> None:
    schema = strawberry.Schema(
        query=Query, subscription=Subscription, execution_context_class=SchemaExecutionContext
    )
    results = await schema.subscribe("subscription { point { id at { x y } } }")
    assert not hasattr(results, "errors") or results.errors is None  # an iterator, not an error
    seen = 0
    async for result in results:
        assert result.errors is None
        seen += 1
        if seen == 10:
            early = live_field_details()
        if seen == 10 * EVENTS - 1:
            late = live_field_details()
            break
    assert late <= early + 10


def test_the_services_schema_uses_it() -> None:
    assert build_schema().execution_context_class is SchemaExecutionContext


# A non-null field that fails cancels its siblings' pending tasks (graphql-core's
# gather_with_cancel); a task cancelled before its first step never awaits the coroutines it
# holds. Whether one is caught so depends on how many steps each resolver takes: every
# combination of up to three is tried, failing field first and last.
STEPS = range(4)


@strawberry.type
class Entry:
    number: int

    @strawberry.field
    async def double(self) -> int:
        return self.number * 2


def abandoning_schema(entry_steps: int, failure_steps: int) -> strawberry.Schema:
    @strawberry.type
    class Query:
        @strawberry.field
        async def entries(self) -> list[Entry]:
            for _ in range(entry_steps):
                await asyncio.sleep(0)
            return [Entry(number=number) for number in range(3)]

        @strawberry.field
        async def fails(self) -> int:
            for _ in range(failure_steps):
                await asyncio.sleep(0)
            raise ValueError("this field fails")

    return strawberry.Schema(query=Query, execution_context_class=SchemaExecutionContext)


@pytest.mark.parametrize(
    "document", ["{ fails entries { double } }", "{ entries { double } fails }"]
)
def test_a_failing_field_leaves_no_coroutine_of_its_siblings_unawaited(document: str) -> None:
    unawaited = []
    for entry_steps in STEPS:
        for failure_steps in STEPS:
            schema = abandoning_schema(entry_steps, failure_steps)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = asyncio.run(schema.execute(document))
                gc.collect()
            assert result.data is None
            assert [error.message for error in result.errors or []] == ["this field fails"]
            unawaited += [
                f"{entry_steps}/{failure_steps}: {warning.message}"
                for warning in caught
                if "never awaited" in str(warning.message)
            ]
    assert unawaited == []
