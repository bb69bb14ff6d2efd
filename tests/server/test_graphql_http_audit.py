"""graphql-http's audit of the GraphQL-over-HTTP specification (the reference implementation's
`auditServer`), run against a real `kasparro serve`: every audit must pass (no notice, warning
or error).

graphql-http is pinned by tests/server/graphql_http/package-lock.json and installed with
`npm ci` into tests/server/graphql_http/node_modules (ignored by git) unless it was installed
from the same lock file. Without node and npm the test is skipped, except under CI, where it
fails.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.support.ci import unavailable
from tests.support.live_server import kasparro_serve

pytestmark = pytest.mark.slow

AUDIT_DIR = Path(__file__).resolve().parent / "graphql_http"
SCRIPT = AUDIT_DIR / "audit.mjs"
MIN_NODE = 20
INSTALL_TIMEOUT = 300
AUDIT_TIMEOUT = 60


def node_tools() -> tuple[str, str]:
    """node (MIN_NODE or newer: graphql-http uses the global fetch) and npm."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        unavailable("node and npm are needed to run graphql-http's audit")
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout.strip()
    major = version.removeprefix("v").split(".")[0]
    if not major.isdigit() or int(major) < MIN_NODE:
        unavailable(f"node {version or '(unknown)'} is older than {MIN_NODE}")
    return node, npm


def install(npm: str) -> None:
    """`npm ci` unless node_modules was installed from this lock file; test processes running
    side by side take turns on a file lock (outside the tree, so git never sees it)."""
    lock = (AUDIT_DIR / "package-lock.json").read_bytes()
    digest = hashlib.sha256(lock).hexdigest()
    where = hashlib.sha256(str(AUDIT_DIR).encode()).hexdigest()[:16]
    turn_path = Path(tempfile.gettempdir()) / f"kasparro-graphql-http-{where}.lock"
    with turn_path.open("w") as turn:
        fcntl.flock(turn, fcntl.LOCK_EX)
        stamp = AUDIT_DIR / "node_modules" / ".installed-from-lock"
        if stamp.exists() and stamp.read_text() == digest:
            return
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=AUDIT_DIR,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(f"npm ci in {AUDIT_DIR} failed:\n{result.stdout}{result.stderr}")
        stamp.write_text(digest)


async def audit(node: str, url: str) -> list[dict[str, Any]]:
    process = await asyncio.create_subprocess_exec(
        node,
        str(SCRIPT),
        url,
        cwd=AUDIT_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(AUDIT_TIMEOUT):
        stdout, stderr = await process.communicate()
    if process.returncode != 0:
        pytest.fail(f"the audit exited with {process.returncode}:\n{stderr.decode()}")
    results: list[dict[str, Any]] = json.loads(stdout)
    return results


async def test_every_graphql_over_http_audit_passes(
    migrated_sqlite_url: str, tmp_path: Path
) -> None:
    node, npm = node_tools()
    install(npm)
    log = tmp_path / "serve.log"
    async with kasparro_serve(env={"DATABASE_URL": migrated_sqlite_url}, log=log) as server:
        results = await audit(node, f"{server.http}/graphql")
    counts = Counter(result["status"] for result in results)
    summary = (
        f"{counts['ok']} ok, {counts['notice']} notices, {counts['warn']} warnings, "
        f"{counts['error']} errors of {len(results)} audits"
    )
    print(f"graphql-http audit: {summary}")
    failed = [
        f"{result['status']} {result['id']} {result['name']}: {result['reason']} "
        f"(got {json.dumps(result['response'])[:400]})"
        for result in results
        if result["status"] != "ok"
    ]
    assert not failed, summary + "\n" + "\n".join(failed)
    assert len(results) >= 61  # graphql-http 1.23's audits; a newer release may add some
