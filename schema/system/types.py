"""GraphQL types of the service itself: health."""

from __future__ import annotations

from enum import Enum

import strawberry

from schema.runs.types import EtlRun


@strawberry.enum(description="Whether a dependency answered a probe just now.")
class ComponentStatus(Enum):
    UP = "up"
    DOWN = "down"

    @classmethod
    def of(cls, reachable: bool) -> ComponentStatus:
        return cls.UP if reachable else cls.DOWN


@strawberry.enum(description="The service as a whole.")
class HealthStatus(Enum):
    OK = "ok"
    DEGRADED = "degraded"


@strawberry.type(description="The read replica (DATABASE_READ_URL) that serves plain queries.")
class ReplicaHealth:
    database: ComponentStatus
    lag_seconds: float | None = strawberry.field(
        description="Seconds since the transaction it replayed last committed on the primary "
        "(grows while the primary is idle); null when it cannot be told."
    )


@strawberry.type(description="Liveness of the service's dependencies and of its ingestion.")
class Health:
    database: ComponentStatus
    broker: ComponentStatus
    embedded: bool = strawberry.field(
        description="True when running on the embedded defaults (no REDIS_URL)."
    )
    version: str
    last_runs: list[EtlRun] = strawberry.field(
        description="The newest run of each source that has run (empty while the database is down)."
    )
    status: HealthStatus = strawberry.field(
        description="DEGRADED when a dependency is down or the newest run of an enabled source "
        "failed."
    )
    reasons: list[str] = strawberry.field(description="Why the status is DEGRADED; empty if OK.")
    replica: ReplicaHealth | None = strawberry.field(
        default=None,
        description="The read replica, probed now; null when queries read the primary "
        "(no DATABASE_READ_URL). `database` is the primary.",
    )
