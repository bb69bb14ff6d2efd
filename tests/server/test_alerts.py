"""Alerts reach the local SMTP server and the webhook once per condition, not once per run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from server.db import create_engine
from server.settings import Settings
from server.tables import alert_state, anomalies, drift_events
from tests.support.fake_upstream import FakeUpstream, Fault, Route
from tests.support.receivers import Mailbox, Webhook, smtp_server, webhook_receiver
from workers.alerts import Alert, build_notifier, conditions_of, resolved_by
from workers.alerts.notifier import Notifier
from workers.observe import observe_run
from workers.pipeline.runner import RunResult, run_source
from workers.runtime import Runtime, open_runtime

SMTP_PASSWORD = "smtp-pa55word-for-alerts"


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream.shared()


@pytest.fixture
def mail() -> Iterator[tuple[Mailbox, int]]:
    with smtp_server() as server:
        yield server


@pytest.fixture
def hook() -> Iterator[Webhook]:
    with webhook_receiver() as receiver:
        yield receiver


def alert_settings(
    engine: AsyncEngine, fake: FakeUpstream, port: int, hook: Webhook, **env: Any
) -> Settings:
    values: dict[str, Any] = {
        "DATABASE_URL": engine.url.render_as_string(hide_password=False),
        "KASPARRO_SOURCES": "coingecko",
        "COINGECKO_BASE_URL": fake.coingecko_url,
        "KASPARRO_COINGECKO_CALLS_PER_MINUTE": 60_000,
        "KASPARRO_HTTP_MAX_ATTEMPTS": 2,
        "KASPARRO_HTTP_BACKOFF": 0.01,
        "KASPARRO_ALERT_WEBHOOK_URL": hook.url,
        "KASPARRO_SMTP_HOST": "127.0.0.1",
        "KASPARRO_SMTP_PORT": port,
        "KASPARRO_SMTP_SECURITY": "none",
        "KASPARRO_SMTP_USER": "alerts",
        "KASPARRO_SMTP_PASSWORD": SMTP_PASSWORD,
        "KASPARRO_SMTP_FROM": "kasparro@example.test",
        "KASPARRO_ALERT_EMAIL_TO": "ops@example.test,oncall@example.test",
        "KASPARRO_ALERT_BACKOFF": 0.01,
        **env,
    }
    return Settings.load(_env_file=None, **values)


@pytest.fixture
def make_runtime(
    engine: AsyncEngine, fake: FakeUpstream, mail: tuple[Mailbox, int], hook: Webhook
) -> Any:
    def make(**env: Any) -> AbstractAsyncContextManager[Runtime]:
        return open_runtime(alert_settings(engine, fake, mail[1], hook, **env), engine=engine)

    return make


@pytest.fixture
async def runtime(make_runtime: Any) -> AsyncIterator[Runtime]:
    async with make_runtime() as runtime:
        yield runtime


async def failing_run(runtime: Runtime, fake: FakeUpstream) -> RunResult:
    fake.inject(Route.MARKETS, Fault.error(401, {"error": "invalid api key"}))
    result = await run_source(runtime, "coingecko", trigger="test")
    assert result.status == "failed"
    return result


async def test_a_lasting_failure_is_alerted_once_by_email_and_webhook(
    runtime: Runtime, fake: FakeUpstream, mail: tuple[Mailbox, int], hook: Webhook
) -> None:
    mailbox, _ = mail
    for _ in range(3):
        await failing_run(runtime, fake)

    assert len(mailbox.messages) == 1
    message = mailbox.messages[0]
    assert message["Subject"] == "[kasparro] coingecko ingestion failed"
    assert message["To"] == "ops@example.test, oncall@example.test"
    assert message["X-Kasparro-Alert"] == "run_failed:coingecko"
    assert "invalid api key" in str(message.get_payload())
    assert mailbox.logins == [("alerts", SMTP_PASSWORD)]

    assert len(hook.bodies) == 1
    body = hook.bodies[0]
    assert body["key"] == "run_failed:coingecko"
    assert body["kind"] == "run_failed"
    assert body["source"] == "coingecko"
    assert isinstance(body["run_id"], int)

    async with runtime.engine.connect() as conn:
        rows = (await conn.execute(select(alert_state))).mappings().all()
    assert {(r["condition"], r["channel"], r["sent_count"]) for r in rows} == {
        ("run_failed:coingecko", "email", 1),
        ("run_failed:coingecko", "webhook", 1),
    }
    alerts = runtime.metrics.alerts
    assert alerts.labels("webhook", "sent")._value.get() == 1
    assert alerts.labels("webhook", "suppressed")._value.get() == 2


async def test_a_recovery_ends_the_condition_so_the_next_failure_alerts_again(
    runtime: Runtime, fake: FakeUpstream, mail: tuple[Mailbox, int], hook: Webhook
) -> None:
    await failing_run(runtime, fake)
    assert (await run_source(runtime, "coingecko", trigger="test")).status == "succeeded"
    await failing_run(runtime, fake)
    assert len(mail[0].messages) == 2
    assert [body["key"] for body in hook.bodies] == ["run_failed:coingecko"] * 2


async def test_the_condition_is_alerted_again_after_the_window(
    engine: AsyncEngine,
    make_runtime: Any,
    fake: FakeUpstream,
    mail: tuple[Mailbox, int],
    hook: Webhook,
) -> None:
    async with make_runtime(KASPARRO_ALERT_WINDOW=60) as runtime:
        await failing_run(runtime, fake)
        await failing_run(runtime, fake)
        assert len(hook.bodies) == 1
        # The window passes: the last sends are made a little more than a window old.
        async with engine.begin() as conn:
            sent = (await conn.execute(select(alert_state))).all()
            for row in sent:
                await conn.execute(
                    update(alert_state)
                    .where(
                        alert_state.c.condition == row.condition,
                        alert_state.c.channel == row.channel,
                    )
                    .values(last_sent_at=row.last_sent_at - timedelta(seconds=61))
                )
        await failing_run(runtime, fake)
    assert len(hook.bodies) == 2
    assert len(mail[0].messages) == 2


async def test_a_failed_send_is_retried_with_backoff(
    runtime: Runtime, fake: FakeUpstream, hook: Webhook
) -> None:
    hook.fail = 2  # KASPARRO_ALERT_MAX_ATTEMPTS defaults to 3
    await failing_run(runtime, fake)
    assert hook.attempts == 3
    assert len(hook.bodies) == 1


async def test_an_undelivered_alert_is_not_counted_as_sent(
    runtime: Runtime, fake: FakeUpstream, mail: tuple[Mailbox, int], hook: Webhook
) -> None:
    hook.fail = 3  # every attempt of the first run fails
    await failing_run(runtime, fake)
    assert hook.bodies == []
    assert runtime.metrics.alerts.labels("webhook", "failed")._value.get() == 1
    # The next run of the lasting condition delivers it; email went out the first time only.
    await failing_run(runtime, fake)
    assert len(hook.bodies) == 1
    assert len(mail[0].messages) == 1


async def test_drift_and_anomalies_of_a_run_are_alerted_once_per_condition(
    runtime: Runtime, fake: FakeUpstream, mail: tuple[Mailbox, int], hook: Webhook
) -> None:
    for _ in range(2):
        result = await run_source(runtime, "coingecko", trigger="test")
        assert result.status == "succeeded"
        await record_quality_rows(runtime.engine, result.run_id)
        await observe_run(runtime, result)

    keys = sorted(body["key"] for body in hook.bodies)
    assert keys == ["anomaly:run_fetched:coingecko", "drift:coingecko:current_price"]
    drift = next(body for body in hook.bodies if body["kind"] == "drift")
    assert drift["details"]["changes"][0]["matched_field"] == "price"
    anomaly = next(body for body in hook.bodies if body["kind"] == "anomaly")
    assert anomaly["details"]["count"] == 2
    assert sorted(m["X-Kasparro-Alert"] for m in mail[0].messages) == keys
    counted = runtime.metrics.drift_events.labels("coingecko", "renamed", "auto_mapped")
    assert counted._value.get() == 2
    assert runtime.metrics.anomalies.labels("coingecko", "run_fetched")._value.get() == 4


async def record_quality_rows(engine: AsyncEngine, run_id: int | None) -> None:
    """What the quality checks write for a run: a renamed field and two outliers."""
    async with engine.begin() as conn:
        await conn.execute(
            insert(drift_events).values(
                run_id=run_id,
                source="coingecko",
                kind="renamed",
                field="current_price",
                matched_field="price",
                confidence=0.93,
                action="auto_mapped",
            )
        )
        await conn.execute(
            insert(anomalies),
            [
                {"run_id": run_id, "kind": "run_fetched", "source": "coingecko", "score": s}
                for s in (4.5, 5.1)
            ],
        )


async def test_notifiers_of_two_processes_send_a_condition_once(
    engine: AsyncEngine, fake: FakeUpstream, mail: tuple[Mailbox, int], hook: Webhook
) -> None:
    settings = alert_settings(engine, fake, mail[1], hook)
    engines = [create_engine(settings) for _ in range(4)]
    notifiers = [build_notifier(settings, other) for other in engines]
    alert = Alert("anomaly:price_jump:coingecko", "anomaly", "coingecko", "jump", "a jump")
    try:
        results = await asyncio.gather(*(n.notify(alert) for n in notifiers if n is not None))
    finally:
        for notifier in notifiers:
            assert isinstance(notifier, Notifier)
            await notifier.aclose()
        for other in engines:
            await other.dispose()
    outcomes = sorted(d.outcome for deliveries in results for d in deliveries)
    assert outcomes == ["sent", "sent"] + ["suppressed"] * 6
    assert len(hook.bodies) == 1
    assert len(mail[0].messages) == 1


def test_no_channel_configured_means_no_notifier(engine: AsyncEngine) -> None:
    settings = Settings.load(_env_file=None, DATABASE_URL="sqlite+aiosqlite:///:memory:")
    assert build_notifier(settings, engine) is None


def test_the_smtp_password_and_webhook_url_are_masked(
    engine: AsyncEngine, fake: FakeUpstream, mail: tuple[Mailbox, int], hook: Webhook
) -> None:
    settings = alert_settings(engine, fake, mail[1], hook)
    shown = repr(settings) + str(settings) + settings.model_dump_json()
    assert SMTP_PASSWORD not in shown
    assert "T0KEN-in-path" not in shown
    assert settings.smtp_password is not None
    assert settings.smtp_password.get_secret_value() == SMTP_PASSWORD


def test_an_abandoned_run_raises_the_run_failed_condition_with_its_cause() -> None:
    run = {
        "id": 7,
        "source": "coingecko",
        "status": "abandoned",
        "error": "abandoned: its lease expired; last known cause: database unavailable",
        "fetched": 10,
        "trigger": "schedule",
    }
    (alert,) = conditions_of(run, [], [])
    assert alert.key == "run_failed:coingecko"
    assert alert.message == f"Run 7 of coingecko was abandoned: {run['error']}"
    assert resolved_by(run) == []
