"""Mutations of the runs domain: triggerIngestion queues a run now."""

from __future__ import annotations

from typing import Annotated

import strawberry
import structlog
from strawberry.types import Info

from schema.context import Context
from schema.permissions import HasApiKey
from schema.prices.query import validate_sources
from schema.runs.types import EtlRun
from server.broker.channels import RUNS_CHANNEL, publish
from server.errors import ServiceUnavailable, UserError
from server.queue import TRIGGER, QueueUnavailable, fail_queued_run, queue_run, run_row
from server.settings import Settings
from server.source_names import EXCHANGE_SOURCES

log = structlog.get_logger(__name__)


class SourceDisabled(UserError):
    code = "SOURCE_DISABLED"


class StreamSource(UserError):
    code = "STREAM_SOURCE"


def enabled_source(settings: Settings, source: str) -> str:
    """The source's name, checked to be known (UNKNOWN_SOURCE), to have runs (not a stream:
    STREAM_SOURCE) and to be enabled (SOURCE_DISABLED)."""
    (name,) = validate_sources([source.strip()]) or [source]
    if name in EXCHANGE_SOURCES:
        raise StreamSource(
            f"source {name!r} streams while it is enabled (KASPARRO_SOURCES): it has no run to "
            "trigger; its REST catch-up runs each time its stream connects"
        )
    if name not in settings.sources:
        raise SourceDisabled(
            f"source {name!r} is not enabled on this server (KASPARRO_SOURCES); "
            f"enabled: {', '.join(settings.sources)}"
        )
    return name


@strawberry.type
class RunsMutation:
    @strawberry.mutation(
        description=(
            "Queue an ingestion run of `source` now and return it (status QUEUED). Needs an API "
            "key: `Authorization: Bearer <key>` or `X-API-Key: <key>`."
        ),
        permission_classes=[HasApiKey],
    )
    async def trigger_ingestion(
        self,
        info: Info[Context, None],
        # `source` is a parameter name strawberry's permission checks reserve.
        source_name: Annotated[str, strawberry.argument(name="source")],
    ) -> EtlRun:
        context = info.context
        # Read-your-writes: the run is read back on the primary, and so is anything the
        # selection loads about it (never a read replica that may not have it yet).
        context.read_primary()
        name = enabled_source(context.settings, source_name)
        async with context.engine.begin() as conn:
            run_id = await queue_run(conn, source=name, trigger=TRIGGER)
            row = await run_row(conn, run_id)
        await publish(context.broker, RUNS_CHANNEL, row)
        try:
            await context.queue.enqueue_ingest(name, queued_id=run_id)
        except QueueUnavailable as exc:
            log.warning("run could not be queued", run_id=run_id, source=name, error=str(exc))
            await fail_queued_run(context.engine, run_id, f"not queued: {exc}")
            async with context.engine.connect() as conn:
                await publish(context.broker, RUNS_CHANNEL, await run_row(conn, run_id))
            raise ServiceUnavailable(
                "the job queue is unavailable; the run was not queued, retry in a few seconds"
            ) from None
        log.info("run queued", run_id=run_id, source=name)
        return EtlRun.from_row(row)
