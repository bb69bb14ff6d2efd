"""The `kasparro` command: run the service, its parts, and operator tasks."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import sys
import threading
from typing import Annotated, Any, NoReturn

import typer
import uvicorn

from server.settings import Settings, SettingsError

cli = typer.Typer(
    name="kasparro",
    help="Crypto prices from CoinGecko, CoinPaprika and CSV files, served over GraphQL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Exit codes of every command (README, "Exit codes"). `kasparro ingest` adds 3 (partial) and
# 4 (skipped); `kasparro worker --exit-on-redis-loss` ends with 75 when Redis is unreachable.
EXIT_FAILED = 1
EXIT_USAGE = 2  # a bad option, value or setting
EXIT_DATABASE_UNAVAILABLE = 69  # EX_UNAVAILABLE (sysexits.h): the database cannot be used now

# The database the command was given (named in its error message).
_database_url: list[str] = []

HostOption = Annotated[str | None, typer.Option(help="Listen address [KASPARRO_HOST]")]
PortOption = Annotated[int | None, typer.Option(help="Listen port [KASPARRO_PORT]")]


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """End the command with one line on stderr and `code`."""
    typer.secho(f"kasparro: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment; a bad value ends the command with a one-line message."""
    values = {key: value for key, value in overrides.items() if value is not None}
    try:
        settings = Settings.load(**values)
    except SettingsError as exc:
        fail(str(exc), EXIT_USAGE)
    _database_url[:] = [settings.database_url]
    from server.logging import configure_from_settings

    configure_from_settings(settings)
    return settings


@cli.command()
def up(host: HostOption = None, port: PortOption = None) -> None:
    """The whole system in one process: migrations, server and ingestion scheduler."""
    settings = load_settings(KASPARRO_HOST=host, KASPARRO_PORT=port)
    asyncio.run(_migrate(settings))
    _serve(settings, with_worker=True)


@cli.command()
def serve(host: HostOption = None, port: PortOption = None) -> None:
    """The GraphQL server only (run N replicas behind a load balancer)."""
    _serve(load_settings(KASPARRO_HOST=host, KASPARRO_PORT=port), with_worker=False)


@cli.command()
def worker(
    exit_on_redis_loss: Annotated[
        bool,
        typer.Option(
            "--exit-on-redis-loss",
            help="Exit with code 75 when Redis is unreachable (at start or later) instead of "
            "waiting for it, for a supervisor to restart the worker",
        ),
    ] = False,
) -> None:
    """The arq ingestion worker only (run N workers on one Redis). Redis lost is waited for
    (backoff with jitter, the schedule kept) unless --exit-on-redis-loss: exit code 75."""
    settings = load_settings()
    if settings.redis_url is None:
        typer.secho(
            "kasparro: `kasparro worker` needs REDIS_URL (the job queue); "
            "without Redis use `kasparro up`, which runs the scheduler in-process",
            err=True,
            fg=typer.colors.RED,
        )
        raise typer.Exit(2)
    from workers.worker import EXIT_REDIS_LOST, RedisLost, run_worker

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_worker(settings, exit_on_redis_loss=exit_on_redis_loss))
    except RedisLost as exc:
        fail(
            f"Redis is unreachable ({exc}); exiting as --exit-on-redis-loss asks",
            EXIT_REDIS_LOST,
        )


@cli.command()
def migrate(
    revision: Annotated[str, typer.Argument(help="Target revision")] = "head",
) -> None:
    """Apply database migrations (alembic upgrade head)."""
    settings = load_settings()
    asyncio.run(_migrate(settings, revision))
    typer.echo(f"database at revision {revision}")


@cli.command()
def retention(
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Show what would go (partitions, rows); change nothing"),
    ] = False,
) -> None:
    """Remove prices and raw records older than their policy (KASPARRO_RETENTION_PRICES,
    KASPARRO_RETENTION_RAW_RECORDS): whole partitions on PostgreSQL, batched DELETE on SQLite."""
    settings = load_settings()
    for line in asyncio.run(_retention(settings, dry_run=dry_run)):
        typer.echo(line)


EXIT_FOR_STATUS = {"succeeded": 0, "failed": 1, "partial": 3, "skipped": 4}


@cli.command()
def ingest(
    source: Annotated[
        str,
        typer.Argument(
            help="coingecko, coinpaprika, csv, coingecko-history or an installed plugin's "
            "source (`kasparro sources`)"
        ),
    ],
    file: Annotated[
        str | None, typer.Option("--file", help="csv: ingest this file instead of the globs")
    ] = None,
    asset: Annotated[
        str | None,
        typer.Option(
            help="coingecko-history: the CoinGecko coin id, e.g. bitcoin. csv (with --file): the "
            "slug of the existing asset the file's rows are (pinned)"
        ),
    ] = None,
    days: Annotated[int | None, typer.Option(help="coingecko-history: days back from now")] = None,
    symbol: Annotated[
        str | None,
        typer.Option(
            help="coingecko-history: the coin's symbol, for a new asset. csv (with --file, not "
            "with --asset): the symbol of the file's coin, resolved like any coin"
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            help="coingecko-history: the coin's name, for a new asset. csv (with --file, not "
            "with --asset): the name of the file's coin"
        ),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            help="csv: the provider or dataset the file comes from, a lowercase slug (yahoo, "
            "kaggle, my-export); its rows are stored under the source csv:<dataset>. Default: "
            "detected from the file's layout, else named from the file's name"
        ),
    ] = None,
) -> None:
    """One ingestion run now, with progress. Exit code: 0 succeeded, 1 failed, 3 partial
    (rows quarantined), 4 skipped (another run of the source is in progress)."""
    from workers.sources import PluginError, get_plugin, source_names

    settings = load_settings()
    try:
        get_plugin(source)
    except PluginError as exc:
        fail(str(exc), EXIT_USAGE)
    except ValueError:
        fail(f"unknown source {source!r}; known: {', '.join(source_names())}", EXIT_USAGE)
    if dataset is not None:
        from server.source_names import BadDatasetName, check_dataset

        try:
            check_dataset(dataset)
        except BadDatasetName as exc:
            typer.secho(f"kasparro: --dataset: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(2) from None
    given = {"asset": asset, "days": days, "symbol": symbol, "name": name, "dataset": dataset}
    options = {key: value for key, value in given.items() if value is not None}
    status = asyncio.run(_ingest(settings, source, file, options))
    raise typer.Exit(EXIT_FOR_STATUS.get(status, 1))


@cli.command()
def runs(
    source: Annotated[str | None, typer.Option(help="Only this source")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many runs")] = 20,
    show: Annotated[
        int | None,
        typer.Option(
            "--show",
            min=1,
            metavar="RUN",
            help="Show one run in full: counts, checkpoints, error and its quarantined rows",
        ),
    ] = None,
    examples: Annotated[
        int, typer.Option(min=0, max=20, help="--show: rows to print of each kind of reason")
    ] = 3,
) -> None:
    """Recent ingestion runs as a table, newest first; or one run in full (--show RUN), with
    what it quarantined by kind of reason. Exit code 1 when there is no such run."""
    settings = load_settings()
    if show is None:
        asyncio.run(_show_runs(settings, source, limit))
    elif not asyncio.run(_show_run(settings, show, examples)):
        typer.secho(f"kasparro: no run {show}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1)


@cli.command("sources")
def sources_command() -> None:
    """The installed sources, built-in and plugins: where each comes from, whether
    KASPARRO_SOURCES enables it, and its last run and checkpoint. Sources that cannot be
    loaded are listed with the reason (on stderr); exit code 1 then."""
    from rich.console import Console

    from server.console import sources_table
    from workers.sources.plugin import installed_sources, plugin_problems

    settings = load_settings()
    installed = list(installed_sources().values())
    stored = [s.plugin.source if s.plugin else s.name for s in installed]
    states = asyncio.run(_source_states(settings, sorted(set(stored))))
    rows = []
    for source, name in zip(installed, stored, strict=True):
        entry = source.entry_point
        state = states.get(name, {})
        rows.append(
            {
                "name": source.name,
                "origin": f"{entry.distribution} {entry.version}",
                "description": source.plugin.description if source.plugin else "",
                "enabled": source.name in settings.sources,
                "last_run": state.get("last_run"),
                "checkpoints": state.get("checkpoints", []),
                "error": source.error,
            }
        )
    Console().print(sources_table(rows))
    problems = plugin_problems()
    for problem in problems:
        typer.secho(f"kasparro: {problem}", err=True, fg=typer.colors.RED)
    if problems:
        raise typer.Exit(EXIT_FAILED)


async def _source_states(settings: Settings, names: list[str]) -> dict[str, dict[str, Any]]:
    """Each source's newest run and checkpoints, as `kasparro runs` and the `sources` query read
    them (schema/runs/aggregates.py)."""
    from sqlalchemy import select

    from schema.runs.aggregates import source_runs
    from server.db import create_engine
    from server.source_names import stored_under
    from server.tables import checkpoints

    engine = create_engine(settings)
    try:
        await _usable(engine, settings)
        async with engine.connect() as conn:
            runs = await source_runs(conn, names)
            query = (
                select(checkpoints)
                .where(stored_under(checkpoints.c.source, names))
                .order_by(checkpoints.c.source, checkpoints.c.stream)
            )
            rows = (await conn.execute(query)).mappings().all()
    finally:
        await engine.dispose()
    states: dict[str, dict[str, Any]] = {
        name: {"last_run": runs[name].last._asdict() if name in runs and runs[name].last else None}
        for name in names
    }
    for row in rows:
        for name in names:
            if name in (row["source"], row["source"].partition(":")[0]):
                states[name].setdefault("checkpoints", []).append(dict(row))
    return states


assets_cli = typer.Typer(help="Curate identity: pin a source's coin to an asset, or split it off.")
cli.add_typer(assets_cli, name="assets")


@assets_cli.command("pin")
def assets_pin(
    source: Annotated[str, typer.Argument(help="coingecko, coinpaprika or csv")],
    source_asset_id: Annotated[str, typer.Argument(help="The source's id, e.g. btc-bitcoin")],
    asset: Annotated[str, typer.Argument(help="Target asset: id, slug or unique symbol")],
) -> None:
    """Map a source's coin to an asset for good (later runs respect it); moves its prices."""
    from workers.pipeline.overrides import find_asset, pin

    async def apply(conn: Any) -> Any:
        return await pin(
            conn,
            source=source,
            source_asset_id=source_asset_id,
            asset_id=await find_asset(conn, asset),
        )

    _print_override(asyncio.run(_override(load_settings(), apply)))


@assets_cli.command("split")
def assets_split(
    source: Annotated[str, typer.Argument(help="coingecko, coinpaprika or csv")],
    source_asset_id: Annotated[str, typer.Argument(help="The source's id, e.g. uni-universe")],
) -> None:
    """Give a source's coin an asset of its own (pinned), with its prices."""
    from workers.pipeline.overrides import split

    async def apply(conn: Any) -> Any:
        return await split(conn, source=source, source_asset_id=source_asset_id)

    _print_override(asyncio.run(_override(load_settings(), apply)))


async def _override(settings: Settings, apply: Any) -> Any:
    from server.db import create_engine
    from workers.pipeline.overrides import OverrideError

    engine = create_engine(settings)
    try:
        async with engine.begin() as conn:
            result = await apply(conn)
        await _announce_resync(settings)
        return result
    except OverrideError as exc:
        typer.secho(f"kasparro: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None
    finally:
        await engine.dispose()


async def _announce_resync(settings: Settings) -> None:
    """Prices changed asset outside a commit event: servers' caches reload (via Redis; an
    embedded server in another process reloads on its next restart)."""
    from server.broker import create_broker
    from server.broker.channels import PRICES_CHANNEL, publish

    broker = create_broker(settings.redis_url)
    try:
        await publish(broker, PRICES_CHANNEL, {"type": "resync", "reason": "identity override"})
    finally:
        await broker.close()


def _print_override(result: Any) -> None:
    moved = f", {result.prices_moved} prices moved" if result.prices_moved else ""
    typer.echo(
        f"{result.source}/{result.source_asset_id} -> asset {result.asset_id} (pinned{moved})"
    )


@cli.command("schema")
def print_schema() -> None:
    """Print the GraphQL schema (SDL)."""
    from schema.root import sdl

    sys.stdout.write(sdl())


async def _migrate(settings: Settings, revision: str = "head") -> None:
    from server.db import create_maintenance_engine
    from server.migrate import upgrade
    from server.partitions import ensure_partitions
    from server.retention import policies

    engine = create_maintenance_engine(settings)
    try:
        await upgrade(engine, settings, revision)
        # The time partitions ahead of now (PostgreSQL; the worker keeps making them).
        await ensure_partitions(
            engine,
            interval=settings.partition_interval,
            ahead=settings.partitions_ahead,
            manager=settings.partition_manager,
            keep=policies(settings),
        )
    finally:
        await engine.dispose()


async def _retention(settings: Settings, *, dry_run: bool) -> list[str]:
    from server.db import create_maintenance_engine
    from server.retention import apply, describe, plan

    engine = create_maintenance_engine(settings)
    try:
        await _usable(engine, settings)
        expiries = await (plan if dry_run else apply)(engine, settings)
    finally:
        await engine.dispose()
    return describe(expiries, settings, dry_run=dry_run)


async def _require_asset(engine: Any, slug: str) -> None:
    """`ingest csv --asset SLUG` names an existing asset: an unknown slug ends the command (2)."""
    from sqlalchemy import select

    from server.tables import assets

    async with engine.connect() as conn:
        found = await conn.scalar(select(assets.c.id).where(assets.c.slug == slug.lower()))
    if found is None:
        typer.secho(
            f"kasparro: --asset: no asset with slug {slug!r}; ingest its coin first or name it "
            "with --symbol/--name",
            err=True,
            fg=typer.colors.RED,
        )
        raise typer.Exit(2)


async def _ingest(
    settings: Settings, source: str, path: str | None, options: dict[str, Any]
) -> str:
    from rich.console import Console

    from schema.quality.quarantine import run_reasons
    from server.console import ingest_progress, quarantine_summary, runs_table
    from server.db import create_engine
    from server.queue import run_row
    from workers.pipeline.runner import run_source
    from workers.runtime import open_runtime
    from workers.sources import PluginError, UnknownSourceError

    console = Console(stderr=True)
    engine = create_engine(settings)
    try:
        await _usable(engine, settings)
        if source == "csv" and options.get("asset"):
            await _require_asset(engine, str(options["asset"]))
        async with open_runtime(settings, engine=engine) as runtime:
            with ingest_progress(console, source) as progress:
                try:
                    result = await run_source(
                        runtime,
                        source,
                        trigger="cli",
                        path=path,
                        options=options,
                        progress=progress,
                    )
                except (UnknownSourceError, PluginError, ValueError) as exc:
                    typer.secho(f"kasparro: {exc}", err=True, fg=typer.colors.RED)
                    raise typer.Exit(2) from None
            if result.run_id is not None:
                async with engine.connect() as conn:
                    row = await run_row(conn, result.run_id)
                    reasons = await run_reasons(conn, result.run_id, examples=1)
                Console().print(runs_table([row], title=f"Run {result.run_id}"))
                if reasons:
                    Console().print(quarantine_summary(reasons, run_id=result.run_id))
                if source == "csv" and path is None and not row.get("fetched"):
                    _say_unmatched(console, settings.csv_paths)
            else:
                console.print(f"{result.source}: skipped, another run is in progress")
    finally:
        await engine.dispose()
    return result.status


def _say_unmatched(console: Any, patterns: list[str]) -> None:
    """A CSV run that read nothing says which of KASPARRO_CSV_PATHS matched no file."""
    from workers.sources.csv import CsvSource

    unmatched = CsvSource(patterns).unmatched()
    if unmatched:
        console.print(
            f"[yellow]csv: {', '.join(unmatched)} matched no file[/]; set KASPARRO_CSV_PATHS "
            "or pass --file PATH",
            highlight=False,
        )


async def _show_runs(settings: Settings, source: str | None, limit: int) -> None:
    from rich.console import Console
    from sqlalchemy import select

    from server.console import runs_table
    from server.db import create_engine
    from server.tables import etl_runs

    engine = create_engine(settings)
    try:
        await _usable(engine, settings)
        query = select(etl_runs).order_by(etl_runs.c.id.desc()).limit(limit)
        async with engine.connect() as conn:
            if source:
                await _check_run_source(conn, source)
                query = query.where(etl_runs.c.source == source)
            rows = (await conn.execute(query)).mappings().all()
    finally:
        await engine.dispose()
    Console().print(runs_table([dict(row) for row in rows]))


async def _check_run_source(conn: Any, source: str) -> None:
    """`runs --source NAME` names a source: a known one, a dataset of a family (`csv:yahoo`),
    or one that has runs. Anything else ends the command (2) naming the known sources."""
    from sqlalchemy import select

    from server.source_names import is_dataset_source
    from server.tables import etl_runs
    from workers.sources import source_names

    names = source_names()
    if source in names or is_dataset_source(source):
        return
    recorded = set((await conn.execute(select(etl_runs.c.source).distinct())).scalars())
    if source in recorded:
        return
    known = [*names, *sorted(recorded - set(names))]
    fail(f"--source: unknown source {source!r}; known: {', '.join(known)}", EXIT_USAGE)


async def _usable(engine: Any, settings: Settings) -> None:
    """The embedded default's file is made usable on first use, so listing the runs of a new
    installation lists none instead of failing; any other database is connected to once, so
    an unusable one ends the command before it prints anything."""
    if settings.is_sqlite:
        from server.migrate import upgrade

        await upgrade(engine, settings)
        return
    async with engine.connect():
        pass


async def _show_run(settings: Settings, run_id: int, examples: int) -> bool:
    """Print one run in full; False when there is no such run."""
    from rich.console import Console
    from sqlalchemy import select

    from schema.quality.quarantine import run_reasons
    from server.console import run_details
    from server.db import create_engine
    from server.tables import etl_runs

    engine = create_engine(settings)
    try:
        await _usable(engine, settings)
        async with engine.connect() as conn:
            query = select(etl_runs).where(etl_runs.c.id == run_id)
            row = (await conn.execute(query)).mappings().first()
            reasons = await run_reasons(conn, run_id, examples=examples) if row else []
    finally:
        await engine.dispose()
    if row is None:
        return False
    url = f"http://{settings.host}:{settings.port}/graphql"
    Console().print(run_details(dict(row), reasons, examples=examples, graphql_url=url))
    return True


WS_MAX_MESSAGE_BYTES: int = Settings.model_fields["ws_max_message_bytes"].default


def uvicorn_config(
    app: Any,
    *,
    host: str,
    port: int,
    graceful_seconds: int = 3,
    ws_max_size: int = WS_MAX_MESSAGE_BYTES,
) -> uvicorn.Config:
    """How the server runs the app (also used by tests that serve it in-process)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        # The app reads X-Forwarded-For itself, from KASPARRO_TRUSTED_PROXIES only
        # (server.ratelimit.ClientAddressMiddleware); uvicorn's own reading would trust any
        # local client.
        proxy_headers=False,
        # The sans-I/O implementation lets server.live write a client's waiting messages with
        # one system call; compression would cost more than it saves on frames this small.
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        # A larger message is refused (1009) before it is read into memory.
        ws_max_size=ws_max_size,
        timeout_graceful_shutdown=graceful_seconds,
    )


def _serve(settings: Settings, *, with_worker: bool) -> None:
    from server.app import create_app

    app = create_app(settings, with_worker=with_worker)
    # A request allocates thousands of short-lived objects (a page of prices is a few thousand):
    # the youngest generation is collected less often, and what start-up made (the schema,
    # SQLAlchemy's metadata) is left out of every collection. 8% less CPU per page (bench).
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    config = uvicorn_config(
        app, host=settings.host, port=settings.port, ws_max_size=settings.ws_max_message_bytes
    )
    # uvicorn re-raises the signal it caught once it has shut down cleanly; by then the
    # shutdown was graceful, so SIGTERM (docker stop) and Ctrl-C both end with status 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run()


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main() -> None:
    """The `kasparro` command: an unusable database ends it with one line and exit code 69."""
    threading.excepthook = _quiet_closed_loop
    try:
        cli()
    except Exception as exc:
        cause = database_unavailable(exc)
        if cause is None:
            raise
        where = _shown_url(_database_url[0]) if _database_url else "DATABASE_URL"
        typer.secho(
            f"kasparro: cannot use the database at {where}: {cause}",
            err=True,
            fg=typer.colors.RED,
        )
        sys.exit(EXIT_DATABASE_UNAVAILABLE)


def _quiet_closed_loop(args: threading.ExceptHookArgs) -> None:
    """aiosqlite's worker thread may hand a failed connection's last result to an event loop
    that has already closed (omnilib/aiosqlite#241): that says nothing the command's own error
    line does not, so it is not printed. Anything else goes to the default hook."""
    closed_loop = args.exc_type is RuntimeError and str(args.exc_value) == "Event loop is closed"
    name = args.thread.name if args.thread is not None else ""
    if closed_loop and "_connection_worker_thread" in name:
        return
    threading.__excepthook__(args)


# SQLSTATE classes and codes of a database that cannot be used now: connection exceptions (08),
# bad credentials (28), no such database (3D000), shutting down or starting up (57P01-57P03),
# too many connections (53300).
_UNUSABLE_STATES = ("08", "28", "3D000", "57P01", "57P02", "57P03", "53300")


def database_unavailable(error: BaseException) -> str | None:
    """Why the database could not be used, on one line; None when `error` says something else.

    Connecting fails with the driver's own error (asyncpg lets ConnectionRefusedError or a DNS
    failure through) or SQLAlchemy's OperationalError/InterfaceError around it.
    """
    import socket

    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _is_redis_error(current):
            return None
        state = getattr(current, "sqlstate", None) or getattr(current, "pgcode", None)
        unusable = (
            isinstance(current, OperationalError | InterfaceError | PoolTimeout)
            or (isinstance(current, DBAPIError) and current.connection_invalidated)
            or isinstance(current, ConnectionError | socket.gaierror | TimeoutError)
            or (isinstance(state, str) and state.startswith(_UNUSABLE_STATES))
        )
        if unusable:
            return _innermost_message(current)
        wrapped = getattr(current, "orig", None) if isinstance(current, DBAPIError) else None
        current = wrapped if isinstance(wrapped, BaseException) else current.__cause__
    return None


def _is_redis_error(error: BaseException) -> bool:
    return type(error).__module__.startswith("redis.")


def _innermost_message(error: BaseException) -> str:
    """The message of the error at the bottom of `error`'s chain, on one line."""
    seen: set[int] = set()
    while id(error) not in seen:
        seen.add(id(error))
        inner = getattr(error, "orig", None) or error.__cause__
        if not isinstance(inner, BaseException):
            break
        error = inner
    text = " ".join(str(error).split()) or "no detail"
    name = type(error).__name__
    if isinstance(error, OSError | TimeoutError):
        return f"{name}: {text}" if name not in text else text
    return text


def _shown_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "DATABASE_URL"


if __name__ == "__main__":
    main()
