"""GraphQL types of the service itself: health."""

from __future__ import annotations

from enum import Enum

import strawberry


@strawberry.enum(description="Whether a dependency answered a probe just now.")
class ComponentStatus(Enum):
    UP = "up"
    DOWN = "down"

    @classmethod
    def of(cls, reachable: bool) -> ComponentStatus:
        return cls.UP if reachable else cls.DOWN


@strawberry.type(description="Liveness of the service's dependencies.")
class Health:
    database: ComponentStatus
    broker: ComponentStatus
    embedded: bool = strawberry.field(
        description="True when running on the embedded defaults (no REDIS_URL)."
    )
    version: str
