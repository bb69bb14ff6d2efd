"""HAProxy for the tests: its configuration file read as sections of directives, and a private
haproxy process on free ports in front of real `kasparro serve` processes.

    config = HaproxyConfig.parse(DEPLOY_CONFIG.read_text())
    config.section("defaults").first("timeout", "tunnel")   # ['timeout', 'tunnel', '1h']
    async with running_haproxy(balancer_config(config, ...), tmp_path) as haproxy:
        await haproxy.stats()                                # one row per proxy and server
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import os
import re
import shutil
import signal
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_CONFIG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
# The frontend and backend the deployment's configuration names.
FRONTEND = "kasparro"
BACKEND = "servers"
# The response header through which the test configuration says which server answered.
SERVED_BY = "x-kasparro-server"

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0

_SECTION_KEYWORDS = frozenset(
    {
        "global", "defaults", "frontend", "backend", "listen", "resolvers", "peers",
        "userlist", "program", "http-errors", "ring", "cache", "mailers",
    }
)  # fmt: skip
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def haproxy_binary() -> str | None:
    """The haproxy executable (Debian puts it in /usr/sbin, which may be off PATH)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    return shutil.which("haproxy", path=path)


def seconds(value: str) -> float:
    """An HAProxy time ("1h", "30s", "500ms"; a bare number is milliseconds) in seconds."""
    match = re.fullmatch(r"(\d+)(us|ms|s|m|h|d)?", value)
    if match is None:
        raise ValueError(f"{value!r} is not an HAProxy time")
    return int(match[1]) * _UNITS[match[2] or "ms"]


@dataclass
class Section:
    """One section: its keyword, its name, and its directives (comments dropped) as words."""

    keyword: str
    name: str | None
    lines: list[list[str]] = field(default_factory=list)

    def all(self, *words: str) -> list[list[str]]:
        """The directives that start with `words`."""
        return [line for line in self.lines if line[: len(words)] == list(words)]

    def first(self, *words: str) -> list[str] | None:
        found = self.all(*words)
        return found[0] if found else None

    def render(self) -> str:
        head = f"{self.keyword} {self.name}" if self.name else self.keyword
        return "\n".join([head, *("    " + " ".join(line) for line in self.lines)]) + "\n"


@dataclass
class HaproxyConfig:
    sections: list[Section]

    @classmethod
    def parse(cls, text: str) -> HaproxyConfig:
        """Sections start at a line's first column with a section keyword; directives are
        split on blanks (enough for this project's files: no quoted blanks)."""
        sections: list[Section] = []
        for raw in text.splitlines():
            line = raw.split("#", 1)[0].rstrip()
            if not line.strip():
                continue
            words = line.split()
            if not raw[0].isspace() and words[0] in _SECTION_KEYWORDS:
                sections.append(Section(words[0], words[1] if len(words) > 1 else None))
            elif not sections:
                raise ValueError(f"a directive before any section: {raw!r}")
            else:
                sections[-1].lines.append(words)
        return cls(sections)

    def section(self, keyword: str, name: str | None = None) -> Section:
        for section in self.sections:
            if section.keyword == keyword and (name is None or section.name == name):
                return section
        raise KeyError(f"no {keyword} {name or ''} section".strip())


def balancer_config(
    deploy: HaproxyConfig,
    *,
    port: int,
    stats_port: int,
    servers: Sequence[int],
    check_interval: str = "100ms",
) -> str:
    """The deployment's `defaults` and frontend as they are, listening on 127.0.0.1:`port`, in
    front of `kasparro serve` on each of `servers` (checked every `check_interval`, one failed
    check marks a server down); a stats page on `stats_port`. Each response names the server
    that answered in the SERVED_BY header."""
    frontend = deploy.section("frontend", FRONTEND)
    routed = Section(
        "frontend",
        FRONTEND,
        [["bind", f"127.0.0.1:{port}"], *(line for line in frontend.lines if line[0] != "bind")],
    )
    backend = Section(
        "backend",
        BACKEND,
        [
            ["http-response", "set-header", SERVED_BY, "%[srv_name]"],
            ["default-server", "check", "inter", check_interval, "fastinter", check_interval,
             "downinter", check_interval, "fall", "1", "rise", "1"],
            *(["server", f"s{index}", f"127.0.0.1:{p}"] for index, p in enumerate(servers)),
        ],
    )  # fmt: skip
    stats = Section(
        "frontend",
        "stats",
        [["bind", f"127.0.0.1:{stats_port}"], ["stats", "enable"], ["stats", "uri", "/stats"]],
    )
    header = Section("global", None, [["log", "stdout", "format", "raw", "local0", "info"]])
    parts = [header, deploy.section("defaults"), routed, backend, stats]
    return "\n".join(part.render() for part in parts)


@dataclass(frozen=True)
class ServerState:
    """A server of the backend as the stats page shows it."""

    name: str
    status: str  # UP, DOWN, MAINT, ... (a transition shows as e.g. "UP 1/2")
    check: str  # the last health check's result: L7OK (HTTP, expected status), L4CON, ...
    current_sessions: int
    total_sessions: int


class Haproxy:
    """A running haproxy: where it listens and what its stats page says."""

    def __init__(self, port: int, stats_port: int, log: Path) -> None:
        self.port = port
        self.stats_port = stats_port
        self.log = log
        self.process: asyncio.subprocess.Process | None = None

    @property
    def graphql_ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/graphql"

    async def servers(self) -> dict[str, ServerState]:
        """The backend's servers by name, from the stats page's CSV export."""
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(f"http://127.0.0.1:{self.stats_port}/stats;csv")
        response.raise_for_status()
        rows = csv.DictReader(io.StringIO(response.text.removeprefix("# ")))
        return {
            row["svname"]: ServerState(
                row["svname"],
                row["status"],
                row["check_status"].removeprefix("* "),
                int(row["scur"] or 0),
                int(row["stot"] or 0),
            )
            for row in rows
            if row["pxname"] == BACKEND and row["svname"] not in {"FRONTEND", "BACKEND"}
        }

    def log_tail(self, size: int = 3000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text[-size:] or "(no output)"


async def check_config(binary: str, path: Path) -> tuple[int, str]:
    """`haproxy -c -f path`: its exit code and output."""
    process = await asyncio.create_subprocess_exec(
        binary, "-c", "-f", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


@asynccontextmanager
async def running_haproxy(
    binary: str, config: str, directory: Path, *, port: int, stats_port: int
) -> AsyncIterator[Haproxy]:
    """haproxy in the foreground on `config` (written to `directory`), yielded once its stats
    page answers; stopped (SIGTERM, then SIGKILL) when the block ends."""
    path = directory / "haproxy.cfg"
    path.write_text(config)
    code, output = await check_config(binary, path)
    if code != 0:
        raise AssertionError(f"haproxy refuses the generated configuration:\n{output}\n{config}")
    haproxy = Haproxy(port, stats_port, directory / "haproxy.log")
    with haproxy.log.open("ab") as log:
        haproxy.process = await asyncio.create_subprocess_exec(
            binary, "-db", "-f", str(path),
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    try:
        await _wait_for_stats(haproxy)
        yield haproxy
    finally:
        await _stop(haproxy.process)


async def _wait_for_stats(haproxy: Haproxy) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    assert haproxy.process is not None
    while True:
        if haproxy.process.returncode is not None:
            raise AssertionError(f"haproxy exited at start-up:\n{haproxy.log_tail()}")
        with contextlib.suppress(httpx.TransportError):
            await haproxy.servers()
            return
        if loop.time() > deadline:
            raise AssertionError(f"haproxy did not start:\n{haproxy.log_tail()}")
        await asyncio.sleep(0.05)


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()
