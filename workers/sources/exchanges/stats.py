"""What one exchange feed has done so far: counters for logs, metrics and tests (they only grow,
except `last_frame_at`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(slots=True)
class FeedStats:
    connects: int = 0  # WebSocket connections opened and subscribed
    reconnects: int = 0  # of those, the ones after the first
    connect_failures: int = 0  # attempts that failed before a connection was up
    stale: int = 0  # connections closed for silence past `stale_after`
    gaps: int = 0  # id jumps found (a stream trade or a Coinbase heartbeat ahead of the last id)
    catchups: int = 0  # REST catch-ups after (re)connecting, for pairs with a known last id
    gap_trades_filled: int = 0  # trades that came from REST (gap fills and catch-ups)
    trades_unfilled: int = 0  # ids REST did not have after the retries: accepted as missing
    fill_failures: int = 0  # gap fills that failed (REST error): the connection was reopened
    rest_requests: int = 0
    duplicates: int = 0  # stream trades at or below the last id: dropped
    rejected: int = 0  # frames that could not be parsed
    vendor_errors: int = 0  # errors the exchange reported in-band (a refused subscription)
    unknown_pairs: int = 0  # trades of a pair the feed does not follow: dropped
    pings_answered: int = 0  # the exchange's protocol pings (each answered with a pong)
    pings_sent: int = 0  # application pings sent after idle silence (Kraken)
    pongs: int = 0  # answers to those
    last_frame_at: datetime | None = None
