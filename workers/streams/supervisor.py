"""Every enabled stream source of a process: one `StreamRunner` each, for the process's life.

Both the arq worker (`workers/worker.py`) and `kasparro up` (`workers/inprocess.py`) run one:
every process tries to stream every enabled stream source, and the lease gives each source one
owner at a time across them (`workers/streams/lease.py`), the others standing by to take over.
Stream sources are left out of the interval schedule: a stream is its own catch-up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

import structlog

from server.settings import Settings
from workers.runtime import Runtime
from workers.sources.exchanges.source import shared_rates
from workers.sources.plugin import PluginError, UnknownSourceError, get_plugin
from workers.streams.runner import StreamRunner

log = structlog.get_logger(__name__)


def is_stream_source(name: str) -> bool:
    """Whether `name` is an installed source with a stream (one that cannot load: no)."""
    try:
        return get_plugin(name).stream is not None
    except (PluginError, UnknownSourceError):
        return False


def stream_sources(settings: Settings) -> list[str]:
    """The enabled sources that stream."""
    return [name for name in settings.sources if is_stream_source(name)]


def scheduled_sources(settings: Settings) -> list[str]:
    """The enabled sources run on the interval schedule: all but the streams."""
    return [name for name in settings.sources if not is_stream_source(name)]


class StreamSupervisor:
    """Runs a `StreamRunner` per source until `stop`; a runner that raises is logged and
    started again (its stream resumes from the checkpoint)."""

    def __init__(self, runtime: Runtime, sources: Iterable[str]) -> None:
        self.runtime = runtime
        rates = shared_rates()  # one process's streams share stablecoin rates they observe
        self.runners = {
            source: StreamRunner(runtime, source, options={"rates": rates}) for source in sources
        }
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for source, runner in self.runners.items():
            task = asyncio.create_task(self._keep(source, runner), name=f"stream-runner:{source}")
            self._tasks.append(task)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _keep(self, source: str, runner: StreamRunner) -> None:
        while True:
            try:
                await runner.run()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("stream runner stopped; starting it again", source=source)
            await asyncio.sleep(self.runtime.settings.run_lease / 3)
