"""Checking hostile documents: the service's document step against graphql-core's stock validation.

    .venv/bin/python -m bench.validation [--rounds 5] [--write]

1. Documents: the worst this bench knows how to build within the default limits (10,000 bytes,
   2,000 tokens, depth 10, 15 aliases), each filled up to the byte or token limit: a field (also
   under a directive reading a variable, which makes graphql-core walk the operation again), a
   leaf, a nested path or a wide selection repeated; identical fragments spread side by side; a
   chain of fragments each spreading the next twice; many operations walking one chain of
   fragments; many variables, each read by a directive; directives stacked on one field; and a
   realistic dashboard query.
2. New: the real step (schema.documents.DocumentCache, with the limits of default Settings): the
   document parsed, measured and validated, then the request checked (operation, variables,
   cost). A fresh cache each round, so nothing is served from it. Timed on a running event loop
   with a 1 ms heartbeat task: the stall is the longest the heartbeat waited beyond its period,
   what every other request on that process waits.
3. Baseline, in the same run: the step as it was, graphql-core's `validate` with the specified
   rules (the pairwise OverlappingFieldsCanBeMergedRule) and Strawberry's QueryDepthLimiter and
   MaxAliasesLimiter (which walk fragments again at every spread). The fragment chain of the
   baseline stops at 17 fragments: each one more doubles its time.
4. Prints the table (CPU ms: the median of the rounds and the worst; the least disturbed round's
   loop stall; the ratio baseline / new); `--write` replaces the "Validation of hostile
   documents" section of BENCHMARKS.md. The acceptance: no document holds the loop for more
   than 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from statistics import median
from typing import Any

from graphql import GraphQLError, Lexer, Source, TokenKind, parse, specified_rules
from strawberry.extensions import MaxAliasesLimiter, QueryDepthLimiter
from strawberry.schema.schema import validate_document

from schema.documents import DocumentCache
from schema.root import build_schema
from server.settings import Settings

SECTION = "## Validation of hostile documents"
BENCHMARKS = Path(__file__).with_name("BENCHMARKS.md")
STALL_LIMIT_MS = 50.0
HEARTBEAT = 0.001


@dataclass(frozen=True)
class Case:
    name: str
    query: str
    variables: dict[str, Any] | None = None
    operation: str | None = None
    baseline: bool = True


def largest(build: Callable[[int], str], limits: Settings) -> str:
    """`build(n)` for the largest n that stays within the byte and token limits."""
    n = 1
    while fits(build(n * 2), limits):
        n *= 2
    step = n // 2
    while step:
        if fits(build(n + step), limits):
            n += step
        step //= 2
    return build(n)


def fits(text: str, limits: Settings) -> bool:
    return len(text.encode()) <= limits.max_query_bytes and tokens(text) <= limits.max_tokens


def tokens(text: str) -> int:
    lexer = Lexer(Source(text))
    count = 0
    while lexer.advance().kind != TokenKind.EOF:
        count += 1
    return count


def repeated(unit: str) -> Callable[[int], str]:
    return lambda n: "{" + f" {unit}" * n + " }"


def fragment_chain(length: int) -> str:
    """Each fragment spreads the next twice: 2^(length + 1) selections."""
    chain = " ".join(f"fragment F{i} on Query {{ ...F{i + 1} ...F{i + 1} }}" for i in range(length))
    return f"{{ ...F0 }} {chain} fragment F{length} on Query {{ __typename }}"


def side_by_side(n: int) -> str:
    """n fragments of the same fields, spread side by side: n^2/2 fragment pairs to compare."""
    spreads = " ".join(f"...F{i}" for i in range(n))
    fragments = " ".join(f"fragment F{i} on Query {{ health {{ database }} }}" for i in range(n))
    return f"{{ {spreads} }} {fragments}"


def shared_chain(n: int) -> str:
    """n operations over one chain of 60 fragments: each operation walks the chain."""
    operations = " ".join(f"query Q{i} {{ ...G0 }}" for i in range(n))
    chain = " ".join(f"fragment G{i} on Query {{ ...G{i + 1} }}" for i in range(60))
    return f"{operations} {chain} fragment G60 on Query {{ health {{ database }} }}"


def variables(n: int) -> str:
    """n variables, each read by a directive."""
    declared = ", ".join(f"$b{i}: Boolean!" for i in range(n))
    used = " ".join(f"__typename @include(if: $b{i})" for i in range(n))
    return f"query Q({declared}) {{ {used} }}"


def repeated_with_a_variable(n: int) -> str:
    """The issue's document with one variable: an operation with variables is walked again
    for their usages by graphql-core's own variable rules."""
    return "query Q($on: Boolean!) {" + " health @include(if: $on) { database }" * n + " }"


def stacked(n: int) -> str:
    """One field under n directives."""
    return "{ __typename" + " @include(if: true)" * n + " }"


NESTED = "prices { nodes { asset { latestPrices { asset { latestPrices { id } } } } } }"
WIDE = "id symbol source observedAt priceUsd marketCapUsd volume24hUsd cursor assetId"
DASHBOARD = (
    "query Dashboard($n: Int, $symbols: [String!]) { "
    "prices(first: $n, filter: {symbols: $symbols}) { edges { cursor node { "
    f"{WIDE} asset {{ id symbol name slug }} }} }} pageInfo {{ hasNextPage endCursor }} }} "
    "latestPrices(symbols: $symbols) { symbol source priceUsd observedAt } "
    "health { status database broker } }"
)


def cases(limits: Settings) -> list[Case]:
    variable_doc = largest(variables, limits)
    count = variable_doc.count("Boolean!")
    return [
        Case("one field repeated (the issue's)", largest(repeated("health { database }"), limits)),
        Case(
            "the same with a variable",
            largest(repeated_with_a_variable, limits),
            {"on": True},
            "Q",
        ),
        Case("a leaf repeated", largest(repeated("__typename"), limits)),
        Case("a nested path repeated", largest(repeated(NESTED), limits)),
        Case("a wide selection repeated", largest(repeated(f"latestPrices {{ {WIDE} }}"), limits)),
        Case("identical fragments side by side", largest(side_by_side, limits)),
        Case("fragment chain of 17 (2^18 selections)", fragment_chain(17)),
        Case("fragment chain filling the limits", largest(fragment_chain, limits), baseline=False),
        Case("operations sharing a fragment chain", largest(shared_chain, limits), operation="Q0"),
        Case(
            f"{count} variables in directives", variable_doc, {f"b{i}": True for i in range(count)}
        ),
        Case("directives stacked on a field", largest(stacked, limits)),
        Case("a dashboard query (valid)", DASHBOARD, {"n": 100, "symbols": ["BTC"]}, "Dashboard"),
    ]


# ---- the two steps ----


def new_step(schema: Any, case: Case) -> str:
    """The service's step, from a fresh cache; the verdict (a code, or `valid`)."""
    cache = DocumentCache(schema._schema, schema.documents.limits)
    checked = cache.document(case.query)
    if checked.valid:
        checked = cache.request(case.query, case.operation, case.variables)  # type: ignore[assignment]
    return verdict(checked.errors)


def parse_only(schema: Any, case: Case) -> str:
    """The parse alone (under the same limits), which both steps start with."""
    try:
        parse(case.query, **schema.documents.limits.parse_options)
    except GraphQLError as error:
        return verdict((error,))
    return "parsed"


def baseline_step(schema: Any, settings: Settings, case: Case) -> str:
    """The step as it was: stock validation with Strawberry's limiters."""
    limits = schema.documents.limits
    try:
        document = parse(case.query, **limits.parse_options)
    except GraphQLError as error:
        return verdict((error,))
    rules = (
        *specified_rules,
        *QueryDepthLimiter(max_depth=settings.max_query_depth).validation_rules,
        *MaxAliasesLimiter(max_alias_count=settings.max_aliases).validation_rules,
    )
    return verdict(tuple(validate_document(schema._schema, document, tuple(rules))))


def verdict(errors: tuple[GraphQLError, ...] | list[GraphQLError]) -> str:
    if not errors:
        return "valid"
    code = (errors[0].extensions or {}).get("code")
    return str(code) if code else errors[0].message[:40]


async def on_loop(work: Callable[[], str]) -> tuple[float, float, str]:
    """Run `work` on this event loop beside a heartbeat: (the CPU time it took, the heartbeat's
    longest stall beyond its period), in ms, and its result. On a busy machine the stall also
    holds the time other processes had the CPU; the CPU time does not."""
    gaps: list[float] = []
    running = True

    async def heartbeat() -> None:
        last = time.perf_counter()
        while running:
            await asyncio.sleep(HEARTBEAT)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    # Each round starts from a collected heap: a step does not pay for the garbage of the
    # rounds before it (the stock step's, above all), only for its own.
    gc.collect()
    task = asyncio.create_task(heartbeat())
    await asyncio.sleep(0.005)
    gaps.clear()
    started = time.thread_time()
    result = work()
    cpu = time.thread_time() - started
    await asyncio.sleep(0.005)
    running = False
    await task
    return cpu * 1000, max(0.0, max(gaps) - HEARTBEAT) * 1000, result


async def run(rounds: int) -> list[dict[str, Any]]:
    settings = Settings.load(_env_file=None)
    schema = build_schema(settings)
    rows = []
    for case in cases(settings):
        size, count = len(case.query.encode()), tokens(case.query)
        new = [await on_loop(partial(new_step, schema, case)) for _ in range(rounds)]
        parsing = [await on_loop(partial(parse_only, schema, case)) for _ in range(rounds)]
        row: dict[str, Any] = {
            "case": case.name,
            "bytes": size,
            "tokens": count,
            "new_ms": median(ms for ms, _, _ in new),
            "new_max_ms": max(ms for ms, _, _ in new),
            "parse_ms": median(ms for ms, _, _ in parsing),
            "stall_ms": min(stall for _, stall, _ in new),
            "new_verdict": new[0][2],
        }
        if case.baseline:
            old = [
                await on_loop(partial(baseline_step, schema, settings, case))
                for _ in range(max(1, rounds // 3))
            ]
            row["old_ms"] = median(ms for ms, _, _ in old)
            row["old_verdict"] = old[0][2]
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def format_row(row: dict[str, Any]) -> str:
    old = f"{row['old_ms']:,.1f}" if "old_ms" in row else "not run"
    ratio = f"{row['old_ms'] / row['new_ms']:,.0f}x" if "old_ms" in row else "-"
    old_verdict = row.get("old_verdict", "-")
    return (
        f"| {row['case']} | {row['bytes']:,} | {row['tokens']:,} | {row['parse_ms']:,.1f} | "
        f"{row['new_ms']:,.1f} | "
        f"{row['new_max_ms']:,.1f} | {row['stall_ms']:,.1f} | {row['new_verdict']} | {old} | "
        f"{old_verdict} | {ratio} |"
    )


HEADER = (
    "| document | bytes | tokens | parse: CPU ms | new: CPU ms | new: max CPU ms | "
    "new: loop stall ms | new: verdict | stock: CPU ms | stock: verdict | stock / new |\n"
    "|---|---:|---:|---:|---:|---:|---:|---|---:|---|---:|"
)


def table(rows: list[dict[str, Any]], rounds: int, load: tuple[float, float]) -> str:
    typical = max(row["new_ms"] for row in rows)
    validation = max(row["new_ms"] - row["parse_ms"] for row in rows)
    stall = max(row["stall_ms"] for row in rows)
    lines = [
        SECTION,
        "",
        "`python -m bench.validation` (see its docstring): the worst documents it builds within "
        "the default limits, through the service's document step (parse, measure, validate, "
        "then the request's operation, variables and cost) from a fresh cache, against "
        "graphql-core's stock validation with Strawberry's depth and alias limiters (the step as "
        f"it was), in the same run. CPU ms: the median of {rounds} rounds on the thread's clock "
        f"(stock: of {max(1, rounds // 3)}), and the new step's worst round; loop stall: the "
        "wall time a 1 ms heartbeat on the same event loop waited beyond its period, in the "
        f"least disturbed round. {platform.python_implementation()} "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, load average {load[0]:.1f} at the "
        f"start and {load[1]:.1f} at the end (other processes shared the CPUs: the worst rounds "
        "and the stalls hold their time too).",
        "",
        HEADER,
        *(format_row(row) for row in rows),
        "",
        f"The new step: at most {typical:.1f} ms of CPU (median), of which at most "
        f"{validation:.1f} ms after parsing, and a {stall:.1f} ms loop stall for any of these "
        f"documents (acceptance: {STALL_LIMIT_MS:.0f} ms of validation). Both steps parse "
        "alike (the parse column); ratios compare the whole steps. "
        'The stock verdict "Validation aborted." is graphql-core giving up on the pairwise '
        "rule's recursion after the time shown; the stock fragment chain doubles with every "
        "fragment, so the chain that fills the limits was not run against it.",
        "",
    ]
    return "\n".join(lines)


def write(text: str) -> None:
    current = BENCHMARKS.read_text()
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(current):
        updated = pattern.sub(lambda _: text + "\n", current, count=1)
    else:
        updated = current.rstrip("\n") + "\n\n" + text
    BENCHMARKS.write_text(updated)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    print(HEADER)
    started = os.getloadavg()[0]
    rows = asyncio.run(run(args.rounds))
    text = table(rows, args.rounds, (started, os.getloadavg()[0]))
    print()
    print(text)
    if args.write:
        write(text)


if __name__ == "__main__":
    main()
