"""A fork server for the real `kasparro` command line, for tests that kill runs again and again.

    python -m tests.support.ingest_child

imports what `kasparro ingest` needs once, then reads commands from stdin, one JSON object a line:

    {"argv": ["ingest", "csv", "--file", PATH], "env": {"DATABASE_URL": ...}, "log": PATH}

It says `{"ready": true}` on stdout once imported. For each command it forks a child that puts
`env` into its environment, sends its output to `log` and runs `server.cli` with `argv`, and it
answers on stdout with `{"pid": N}` at once and
`{"pid": N, "exit": CODE}` when the child has ended (CODE is -SIGNAL when killed by a signal).
Commands are handled one at a time. The test kills a child with `os.kill(pid, SIGKILL)`: a
resume then costs a fork instead of Python's start-up and imports, most of a short run's time.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from typing import Any

# What `kasparro ingest` imports lazily, imported here once, before any fork.
WARM_MODULES = (
    "server.cli",
    "server.console",
    "server.db",
    "server.migrate",
    "rich.console",
    "sqlalchemy.dialects.postgresql.asyncpg",
    "sqlalchemy.dialects.sqlite.aiosqlite",
    "workers.pipeline.runner",
    "workers.pipeline.runs",
    "workers.runtime",
    "workers.sources.csv",
    "workers.sources.coingecko",
    "workers.sources.coinpaprika",
)


def answer(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def run_command(command: dict[str, Any]) -> int:
    """In the forked child: the command line with the command's environment and output."""
    log = os.open(command["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.environ.update({str(k): str(v) for k, v in command.get("env", {}).items()})
    sys.argv = ["kasparro", *map(str, command["argv"])]
    from server.cli import main as kasparro

    try:
        kasparro()
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


def main() -> None:
    for name in WARM_MODULES:
        importlib.import_module(name)
    answer({"ready": True})
    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = run_command(command)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        answer({"pid": pid})
        _, status = os.waitpid(pid, 0)
        answer({"pid": pid, "exit": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
    main()
