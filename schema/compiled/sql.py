"""Statements the compiled path runs: built once per shape, then only their values change.

Building a SQLAlchemy statement costs more than running it on a warm connection (about 80 µs for
a one-asset page, several times that for a UNION of branches), and SQLAlchemy's execution
layer as much again. A `Prepared` statement is built once per shape (which filters, how many
assets, which cursor...) from placeholder values, the probes, and compiled for PostgreSQL; each
run then sends its text and the request's values, put where the probes were, straight to
asyncpg on a connection of the engine's pool (asyncpg keeps the statement prepared), with no
transaction around the read. Rows come back as tuples in the statement's column order.

The statement is the builder's own, so it is the one the EXPLAIN tests check; only the values
differ. A builder that writes a value into the SQL text instead of binding it cannot be
prepared: `Unpreparable`, and its shape runs the ordinary way.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from sqlalchemy import ClauseElement
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.compiler import SQLCompiler


class Unpreparable(Exception):
    """A statement whose values are not all bound parameters."""


class Prepared:
    """A statement built from probe values; run with the request's value of each probe's slot."""

    __slots__ = ("slots", "text")

    def __init__(self, statement: ClauseElement, probes: Mapping[Hashable, str], dialect: Dialect):
        """`probes` maps each probe value the builder was given to the name of its slot."""
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        slots = []
        for name in compiled.positiontup or ():
            value = compiled.binds[name].effective_value
            try:
                slots.append(probes[value])
            except (KeyError, TypeError):
                raise Unpreparable(f"parameter {name} holds no probe: {value!r}") from None
        if "POSTCOMPILE" in compiled.string:  # an IN list expanded per run
            raise Unpreparable("the statement expands a list at run time")
        missing = set(probes.values()) - set(slots)
        if missing:
            raise Unpreparable(f"not bound (written into the SQL?): {sorted(missing)}")
        self.text: str = compiled.string
        self.slots: tuple[str, ...] = tuple(slots)

    async def fetch(self, conn: AsyncConnection, values: Mapping[str, Any]) -> Sequence[Any]:
        """The rows for these slot values, on `conn`'s asyncpg connection."""
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection
        try:
            return await self.fetch_on(driver, values)
        except Exception:
            if driver.is_closed():  # never hand a dead connection back to the pool
                await conn.invalidate()
            raise

    async def fetch_on(self, driver: Any, values: Mapping[str, Any]) -> Sequence[Any]:
        """The rows for these slot values, on an asyncpg connection (`driver_connection`)."""
        rows: Sequence[Any] = await driver.fetch(self.text, *[values[s] for s in self.slots])
        return rows
