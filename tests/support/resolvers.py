"""A document run by the Strawberry schema's own resolvers, with the context the app builds.

/graphql may answer a document on a compiled path (server/compiled.py) without calling the
resolvers; tests of a resolver itself go through here.
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request

from schema.context import Context
from schema.root import build_schema


class Resolvers:
    """Runs documents against `app`'s state (engine, broker, cache), one fresh context each."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.schema = build_schema(app.state.settings)

    def context(self) -> Context:
        state = self.app.state
        scope = {"type": "http", "app": self.app, "method": "POST", "headers": []}
        return Context(
            request=Request(scope),
            settings=state.settings,
            engine=state.engine,
            sessionmaker=state.sessionmaker,
            broker=state.broker,
            request_id="test",
            queue=state.queue,
            price_cache=state.price_cache,
            live=getattr(state, "live", None),
        )

    async def __call__(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """The response body, as /graphql would send it (data, and errors when there are)."""
        result = await self.schema.execute(
            query, variable_values=variables, context_value=self.context()
        )
        body: dict[str, Any] = {"data": result.data}
        if result.errors:
            body["errors"] = [error.formatted for error in result.errors]
        return body
