"""The notifier: sends a finished run's alerts to every channel, once per condition per window,
retrying each send with exponential backoff."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from server.settings import Settings
from workers.alerts import dedup
from workers.alerts.channels import Channel, ChannelError, EmailChannel, WebhookChannel
from workers.alerts.conditions import Alert, conditions_of, resolved_by
from workers.metrics import IngestMetrics

log = structlog.get_logger(__name__)

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Delivery:
    """What became of one alert on one channel: sent, failed or suppressed (within window)."""

    key: str
    channel: str
    outcome: str


class Notifier:
    """Alerts for runs, through `channels`, de-duplicated in the database of `engine`."""

    def __init__(
        self,
        engine: AsyncEngine,
        channels: Sequence[Channel],
        *,
        window: float,
        max_attempts: int = 3,
        backoff: float = 1.0,
        metrics: IngestMetrics | None = None,
        sleep: Sleep = asyncio.sleep,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.engine = engine
        self.channels = list(channels)
        self.window = window
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.metrics = metrics
        self._sleep = sleep
        self._client = client  # closed by aclose(): the webhook's, when this notifier made it

    async def aclose(self) -> None:
        """Close the HTTP client this notifier owns."""
        if self._client is not None:
            await self._client.aclose()

    async def notify_run(
        self,
        run: Mapping[str, Any],
        drift: Sequence[Mapping[str, Any]],
        anomalies: Sequence[Mapping[str, Any]],
    ) -> list[Delivery]:
        """Send the alerts of a finished run and clear the conditions it ended."""
        ended = resolved_by(run)
        if ended and await dedup.clear(self.engine, ended):
            log.info("alert condition ended", conditions=ended)
        deliveries = []
        for alert in conditions_of(run, drift, anomalies):
            deliveries += await self.notify(alert)
        return deliveries

    async def notify(self, alert: Alert) -> list[Delivery]:
        """Send `alert` to every channel that has not sent its condition within the window."""
        results = await asyncio.gather(*(self._deliver(alert, c) for c in self.channels))
        return list(results)

    async def _deliver(self, alert: Alert, channel: Channel) -> Delivery:
        taken = await dedup.claim(self.engine, alert.key, channel.name, window=self.window)
        if taken is None:
            return self._done(alert, channel, "suppressed")
        try:
            await self._send_with_retries(alert, channel)
        except ChannelError as exc:
            await dedup.release(self.engine, taken)
            log.error("alert not delivered", alert=alert.key, channel=channel.name, error=str(exc))
            return self._done(alert, channel, "failed")
        except BaseException:
            await asyncio.shield(dedup.release(self.engine, taken))
            raise
        log.info("alert sent", alert=alert.key, channel=channel.name)
        return self._done(alert, channel, "sent")

    async def _send_with_retries(self, alert: Alert, channel: Channel) -> None:
        for attempt in range(1, self.max_attempts + 1):
            try:
                await channel.send(alert)
                return
            except ChannelError as exc:
                if attempt == self.max_attempts:
                    raise
                delay = self.backoff * 2 ** (attempt - 1)
                log.warning(
                    "alert send failed; retrying",
                    alert=alert.key,
                    channel=channel.name,
                    attempt=attempt,
                    retry_in_s=delay,
                    error=str(exc),
                )
                await self._sleep(delay)

    def _done(self, alert: Alert, channel: Channel, outcome: str) -> Delivery:
        if self.metrics is not None:
            self.metrics.alerts.labels(channel.name, outcome).inc()
        return Delivery(alert.key, channel.name, outcome)


def build_notifier(
    settings: Settings, engine: AsyncEngine, *, metrics: IngestMetrics | None = None
) -> Notifier | None:
    """The notifier the settings configure; None when no channel is set up."""
    channels: list[Channel] = []
    client = None
    if settings.alert_webhook_url is not None:
        client = httpx.AsyncClient()
        channels.append(
            WebhookChannel(settings.alert_webhook_url, client, timeout=settings.alert_timeout)
        )
    if settings.alert_email_to and settings.smtp_host and settings.smtp_from:
        channels.append(
            EmailChannel(
                host=settings.smtp_host,
                port=settings.smtp_port,
                sender=settings.smtp_from,
                recipients=settings.alert_email_to,
                security=settings.smtp_security,
                user=settings.smtp_user,
                password=settings.smtp_password,
                timeout=settings.alert_timeout,
            )
        )
    if not channels:
        return None
    return Notifier(
        engine,
        channels,
        window=settings.alert_window,
        max_attempts=settings.alert_max_attempts,
        backoff=settings.alert_backoff,
        metrics=metrics,
        client=client,
    )
