"""Schema-aware generated requests against a real server: valid and invalid documents from
hypothesis-graphql, and operations with variables at their edges, over POST, GET and (for
subscriptions) graphql-sse. A fixed number of examples, derandomized: every run sends the same
requests."""

from __future__ import annotations

import json
from typing import Any

import httpx
import hypothesis_graphql
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.security.checks import Exchange, Verdicts, read_stream
from tests.security.generate import documents, operations, request_text
from tests.security.target import Target
from tests.security.target import client as client_of

pytestmark = [pytest.mark.fuzz, pytest.mark.postgres, pytest.mark.slow]

EXAMPLES = 80


def fixed(examples: int) -> settings:
    """Hypothesis settings of the suite: a bounded, repeatable run, no shrinking (each failing
    input is recorded, not raised)."""
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )


def exchange_of(what: str, sent: str, response: httpx.Response) -> Exchange:
    return Exchange(
        what,
        sent,
        response.status_code,
        response.text,
        response.headers.get("content-type", ""),
        dict(response.headers),
    )


@pytest.mark.parametrize(
    "mode", [hypothesis_graphql.Mode.POSITIVE, hypothesis_graphql.Mode.NEGATIVE]
)
def test_generated_documents(postgres_target: Target, mode: hypothesis_graphql.Mode) -> None:
    target = postgres_target
    since = target.stderr_size()
    verdicts = Verdicts(target.private_paths)
    with client_of(target, timeout=30) as client:

        @fixed(EXAMPLES)
        @given(document=documents(mode), over_get=st.booleans())
        def send(document: str, over_get: bool) -> None:
            if over_get and not document.startswith("mutation"):
                response = client.get("/graphql", params={"query": document})
            else:
                response = client.post("/graphql", json={"query": document})
            verdicts.check(exchange_of(f"{mode.name} document", document, response))

        send()
    verdicts.assert_none(target, since)


def test_generated_variables(target: Target) -> None:
    since = target.stderr_size()
    verdicts = Verdicts(target.private_paths)
    with client_of(target, timeout=30) as client:

        @fixed(EXAMPLES * 2)
        @given(operation=operations("query"), over_get=st.booleans())
        def send(operation: tuple[str, dict[str, Any]], over_get: bool) -> None:
            document, variables = operation
            if over_get:
                params = {"query": document, "variables": json.dumps(variables)}
                response = client.get("/graphql", params=params)
            else:
                response = client.post(
                    "/graphql",
                    content=json.dumps({"query": document, "variables": variables}),
                    headers={"Content-Type": "application/json"},
                )
            verdicts.check(exchange_of("query", request_text(document, variables), response))

        send()
    verdicts.assert_none(target, since)


def test_generated_subscriptions_over_sse(postgres_target: Target) -> None:
    target = postgres_target
    since = target.stderr_size()
    verdicts = Verdicts(target.private_paths)
    # A subscription that is accepted stays open: its first second is read.
    timeout = httpx.Timeout(30, read=0.5)
    with client_of(target, timeout=timeout) as client:

        @fixed(EXAMPLES // 5)
        @given(operation=operations("subscription"))
        def send(operation: tuple[str, dict[str, Any]]) -> None:
            document, variables = operation
            payload = json.dumps({"query": document, "variables": variables})
            headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
            exchange = Exchange("subscription over SSE", request_text(document, variables))
            read_stream(client, exchange, content=payload, headers=headers)
            verdicts.check(exchange)

        send()
    verdicts.assert_none(target, since)
