"""A `kasparro up` process in miniature, for the test that searches its logs for secrets.

    python -m tests.support.logging_child

Settings come from the environment, as in production, and logging is configured from them. It
then serves one triggerIngestion request (with the API key) that runs an ingestion in-process,
queries the finished run, and logs a few careless lines that quote secrets outright. All logs go
to stderr; stdout gets the run's status.
"""

from __future__ import annotations

import asyncio
import logging
import sys

import httpx
import structlog

from server.app import create_app
from server.logging import configure_from_settings
from server.settings import Settings

log = structlog.get_logger("tests.careless")


async def main() -> str:
    settings = Settings.load()
    configure_from_settings(settings)
    # The app runs embedded; REDIS_URL is only there to be kept out of the logs.
    app = create_app(settings.model_copy(update={"redis_url": None}))
    key = settings.api_keys[0].get_secret_value()
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://child") as client:
            triggered = await client.post(
                "/graphql",
                json={"query": 'mutation { triggerIngestion(source: "coingecko") { id } }'},
                headers={"X-API-Key": key},
            )
            run_id = triggered.json()["data"]["triggerIngestion"]["id"]
            status = "queued"
            for _ in range(400):
                answer = await client.post(
                    "/graphql",
                    json={"query": "{ etlRuns(first: 1) { edges { node { id status } } } }"},
                )
                status = answer.json()["data"]["etlRuns"]["edges"][0]["node"]["status"].lower()
                if status not in ("queued", "running"):
                    break
                await asyncio.sleep(0.05)
            # The run is over; its alerts go out after it: let the queued job finish them.
            await asyncio.gather(*app.state.queue._tasks)
            await client.post("/graphql", json={"query": "{ nope }"}, headers={"X-API-Key": key})
    careless(settings)
    return f"{run_id} {status}"


def careless(settings: Settings) -> None:
    """Code that should not log secrets, but does: the redaction must catch it."""
    log.warning("settings", database_url=settings.database_url, redis_url=settings.redis_url)
    log.info("keys", api_keys=[k.get_secret_value() for k in settings.api_keys])
    secret = settings.smtp_password.get_secret_value() if settings.smtp_password else ""
    logging.getLogger("tests.careless").warning("smtp login with %s", secret)
    try:
        raise RuntimeError(f"upstream refused key {settings.coingecko_api_key!s} / {secret}")
    except RuntimeError:
        log.exception("with a traceback", key=repr(settings.coingecko_api_key))
        key = settings.coingecko_api_key.get_secret_value() if settings.coingecko_api_key else ""
        log.error("raw key", key=key, quoted=f'"{key}"')


if __name__ == "__main__":
    sys.stdout.write(asyncio.run(main()) + "\n")
