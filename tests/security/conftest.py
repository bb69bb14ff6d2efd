"""Real `kasparro serve` processes for the security suite, one per key mode, over seeded
PostgreSQL and SQLite databases; each started once per test process and shared by its tests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.security import summary
from tests.security.target import (
    RIGHT_KEY,
    TRACEBACK,
    Database,
    Target,
    prepare_database,
    sqlite_url,
)
from tests.support.services import (
    create_postgres_database,
    drop_postgres_database,
    postgres_admin_url,
)

# Every server of the suite: limits as shipped, except what keeps the suite quick and its
# positive controls stable (a rate limit no run of the suite reaches; a short init timeout).
COMMON_ENV = {
    "KASPARRO_RATE_LIMIT_PER_MINUTE": "1000000",
    "KASPARRO_WS_INIT_TIMEOUT": "2",
}

# Key modes: no key configured; keys configured, reads open; a key required for every read.
KEY_MODES = {
    "no-keys": {},
    "keys-open-reads": {"KASPARRO_API_KEYS": RIGHT_KEY},
    "read-key-required": {"KASPARRO_API_KEYS": RIGHT_KEY, "KASPARRO_REQUIRE_READ_KEY": "true"},
}


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.is_registered(summary):
        config.pluginmanager.register(summary, "security-fuzz-summary")


@pytest.fixture(scope="session")
def security_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("security")


@pytest.fixture(scope="session")
def postgres_database(security_dir: Path) -> Iterator[Database]:
    admin = postgres_admin_url()
    url = asyncio.run(create_postgres_database(admin))
    try:
        yield prepare_database(url, security_dir / "postgres")
    finally:
        asyncio.run(drop_postgres_database(admin, url))


@pytest.fixture(scope="session")
def sqlite_database(security_dir: Path) -> Database:
    workdir = security_dir / "sqlite"
    workdir.mkdir()
    return prepare_database(sqlite_url(workdir / "kasparro.db"), workdir)


def _serve(name: str, database: Database, env: dict[str, str], workdir: Path) -> Iterator[Target]:
    target = Target(name, database, {**COMMON_ENV, **env}, workdir / name)
    target.start()
    try:
        yield target
    finally:
        before = target.stderr_size()
        target.stop()
        log = target.stderr(before)
        assert TRACEBACK not in log, f"{name} logged a traceback at shutdown:\n{log[-5000:]}"


@pytest.fixture(scope="session")
def postgres_target(postgres_database: Database, security_dir: Path) -> Iterator[Target]:
    """Keys configured, reads open (as the service is usually run), on PostgreSQL."""
    yield from _serve(
        "keys-open-reads", postgres_database, KEY_MODES["keys-open-reads"], security_dir
    )


@pytest.fixture(scope="session")
def sqlite_target(sqlite_database: Database, security_dir: Path) -> Iterator[Target]:
    """The same on SQLite."""
    yield from _serve("sqlite", sqlite_database, KEY_MODES["keys-open-reads"], security_dir)


@pytest.fixture(scope="session")
def key_targets(
    postgres_target: Target, postgres_database: Database, security_dir: Path
) -> Iterator[dict[str, Target]]:
    """A server per key mode (the keys-configured one is `postgres_target`); the other two
    start side by side."""
    others = {
        mode: Target(
            mode, postgres_database, {**COMMON_ENV, **KEY_MODES[mode]}, security_dir / mode
        )
        for mode in ("no-keys", "read-key-required")
    }
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(Target.start, others.values()))
        yield {**others, "keys-open-reads": postgres_target}
    finally:
        for target in others.values():
            before = target.stderr_size()
            target.stop()
            log = target.stderr(before)
            assert TRACEBACK not in log, f"{target.name} logged a traceback at shutdown:\n{log}"


@pytest.fixture(params=["postgres", "sqlite"])
def target(request: pytest.FixtureRequest) -> Target:
    """The keys-configured server on each database in turn."""
    found: Target = request.getfixturevalue(f"{request.param}_target")
    return found
