"""GET /debug/memory: what the process holds, for an operator hunting a leak.

Off by default: the route exists only with KASPARRO_DEBUG_MEMORY=1, and even then answers only
a request carrying a valid API key (server.apikeys; 401 otherwise), like everything else that shows
the server's insides. The answer is JSON:

    {"rss_bytes": ..., "objects": <live objects the collector tracks>,
     "types": [[type name, count], ...],               # the `top` most numerous, after a collection
     "tracemalloc": {"tracing": bool, "traced_bytes": ..., "diff": [...]}}

Query parameters: `top` (default 30, at most 500) types and tracemalloc lines;
`tracemalloc=start` starts tracing (`frames`, default 10, deep) and takes the first snapshot,
`tracemalloc=stop` stops it. While tracing, each call lists the lines whose allocations grew the
most since the previous call (`size_diff` bytes and `count_diff` blocks, with the traceback).
Counting walks every object the collector tracks: a few hundred milliseconds on a large heap,
during which the event loop waits.
"""

from __future__ import annotations

import gc
import re
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from server.apikeys import is_valid_key, presented_key
from server.settings import Settings

PATH = "/debug/memory"
DEFAULT_TOP = 30
MAX_TOP = 500
DEFAULT_FRAMES = 10


def type_counts(top: int) -> tuple[int, list[tuple[str, int]]]:
    """After a full collection: how many objects the collector tracks, and the `top` most
    numerous types (module-qualified where the type is not a builtin)."""
    gc.collect()
    counts: Counter[str] = Counter()
    objects = gc.get_objects()
    for obj in objects:
        kind = type(obj)
        module = kind.__module__
        counts[kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"] += 1
    total = len(objects)
    del objects
    return total, counts.most_common(top)


def rss_bytes() -> int | None:
    """This process's resident set size (Linux), or None where /proc is missing."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return int(match.group(1)) * 1024 if match else None


class MemoryDebugger:
    """The state of tracemalloc comparisons between calls (one per app)."""

    def __init__(self) -> None:
        self._snapshot: tracemalloc.Snapshot | None = None

    def tracing(self, action: str | None, frames: int, top: int) -> dict[str, Any]:
        if action == "start" and not tracemalloc.is_tracing():
            tracemalloc.start(frames)
            self._snapshot = None
        elif action == "stop":
            tracemalloc.stop()
            self._snapshot = None
        if not tracemalloc.is_tracing():
            return {"tracing": False}
        snapshot = tracemalloc.take_snapshot().filter_traces(
            (tracemalloc.Filter(False, tracemalloc.__file__),)
        )
        previous, self._snapshot = self._snapshot, snapshot
        report: dict[str, Any] = {
            "tracing": True,
            "traced_bytes": tracemalloc.get_traced_memory()[0],
        }
        if previous is not None:
            report["diff"] = [
                {
                    "size_diff": stat.size_diff,
                    "count_diff": stat.count_diff,
                    "size": stat.size,
                    # file:line only: formatting the source lines would fill linecache.
                    "traceback": [f"{frame.filename}:{frame.lineno}" for frame in stat.traceback],
                }
                for stat in snapshot.compare_to(previous, "traceback")[:top]
            ]
        return report

    async def endpoint(self, request: Request) -> Response:
        settings: Settings = request.app.state.settings
        if not is_valid_key(settings, presented_key(request.headers)):
            return JSONResponse(
                {"error": "an operator's API key is needed: `Authorization: Bearer <key>`"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            top = int(request.query_params.get("top", DEFAULT_TOP))
            frames = int(request.query_params.get("frames", DEFAULT_FRAMES))
        except ValueError:
            return JSONResponse({"error": "`top` and `frames` must be integers"}, 400)
        action = request.query_params.get("tracemalloc")
        if action not in (None, "start", "stop"):
            return JSONResponse({"error": "`tracemalloc` is `start` or `stop`"}, 400)
        top = min(max(top, 1), MAX_TOP)
        frames = min(max(frames, 1), 100)
        objects, types = type_counts(top)
        return JSONResponse(
            {
                "rss_bytes": rss_bytes(),
                "objects": objects,
                "types": types,
                "tracemalloc": self.tracing(action, frames, top),
            },
            headers={"Cache-Control": "no-store"},
        )


def debug_routes(settings: Settings) -> list[BaseRoute]:
    """The debug route when KASPARRO_DEBUG_MEMORY is on, else none."""
    if not settings.debug_memory:
        return []
    return [Route(PATH, MemoryDebugger().endpoint)]
