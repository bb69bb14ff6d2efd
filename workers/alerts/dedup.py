"""One alert per condition and channel per window, shared by every process through the database.

A sender claims (condition, channel) before sending: the insert of a new row, or the update of a
row whose last send is older than the window, succeeds for one process only. A failed send gives
the claim back, so the next run tries again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from server.tables import alert_state


@dataclass(frozen=True, slots=True)
class Claim:
    """The right to send one alert; `previous` is the send it replaces (None: the first)."""

    condition: str
    channel: str
    previous: datetime | None


async def claim(
    engine: AsyncEngine,
    condition: str,
    channel: str,
    *,
    window: float,
    now: datetime | None = None,
) -> Claim | None:
    """Claim the next send of `condition` on `channel`; None when one was sent within `window`
    seconds (by any process)."""
    now = now or datetime.now(UTC)
    key = (alert_state.c.condition == condition) & (alert_state.c.channel == channel)
    async with engine.begin() as conn:
        if await _insert_new(conn, condition, channel, now):
            return Claim(condition, channel, None)
        previous = await conn.scalar(select(alert_state.c.last_sent_at).where(key))
        claimed = await conn.execute(
            update(alert_state)
            .where(key, alert_state.c.last_sent_at <= now - timedelta(seconds=window))
            .values(last_sent_at=now, sent_count=alert_state.c.sent_count + 1)
        )
    return Claim(condition, channel, previous) if claimed.rowcount == 1 else None


async def release(engine: AsyncEngine, taken: Claim) -> None:
    """Give a claim back after the send failed: the condition may be sent again at once."""
    key = (alert_state.c.condition == taken.condition) & (alert_state.c.channel == taken.channel)
    async with engine.begin() as conn:
        if taken.previous is None:
            await conn.execute(delete(alert_state).where(key))
        else:
            await conn.execute(
                update(alert_state)
                .where(key)
                .values(last_sent_at=taken.previous, sent_count=alert_state.c.sent_count - 1)
            )


async def clear(engine: AsyncEngine, conditions: list[str]) -> int:
    """Forget the sends of conditions that ended; returns how many were remembered."""
    if not conditions:
        return 0
    async with engine.begin() as conn:
        result = await conn.execute(
            delete(alert_state).where(alert_state.c.condition.in_(conditions))
        )
    return int(result.rowcount)


async def _insert_new(conn: AsyncConnection, condition: str, channel: str, now: datetime) -> bool:
    values = {"condition": condition, "channel": channel, "last_sent_at": now, "sent_count": 1}
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(alert_state).values(**values).on_conflict_do_nothing()
    result = await conn.execute(statement)
    return int(result.rowcount) == 1
