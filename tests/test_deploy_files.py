"""The container and deployment files: valid against their published schemas, and safe.

Everything here runs offline: check-jsonschema ships the Compose and GitHub workflow schemas.
Each rule is a function returning the problems it finds; the real files must have none, and a
deliberately broken copy must have some, so a rule cannot pass by checking nothing.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.settings import Settings
from tests.deploy.haproxy import (
    BACKEND,
    DEPLOY_CONFIG,
    FRONTEND,
    HaproxyConfig,
    haproxy_binary,
    seconds,
)

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
MAKEFILE = ROOT / "Makefile"
WORKFLOWS = ROOT / ".github" / "workflows"
CI = WORKFLOWS / "ci.yml"
RELEASE = WORKFLOWS / "release.yml"

PORT = 8000
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY")
# ${NAME:?message}: Compose refuses to start when NAME is unset or empty.
REQUIRED_VARIABLE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]*\}")
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?[^}]*\}")
URL_PASSWORD = re.compile(r"://[^:/@\s]*:(?P<password>\$\{[^}]*\}|[^@/\s]*)@")

# The variables of the service's contract (DESIGN.md); .env.example documents each.
CONTRACT_VARIABLES = {
    "DATABASE_URL",
    "REDIS_URL",
    "KASPARRO_HOST",
    "KASPARRO_PORT",
    "KASPARRO_SOURCES",
    "COINGECKO_BASE_URL",
    "COINGECKO_API_KEY",
    "COINPAPRIKA_BASE_URL",
    "COINPAPRIKA_API_KEY",
    "KASPARRO_CSV_PATHS",
    "KASPARRO_API_KEYS",
    "KASPARRO_INGEST_INTERVAL",
    "KASPARRO_LOG_LEVEL",
}


def load_yaml(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict), f"{path.name} is not a YAML mapping"
    return document


def strings(node: object, where: str = "") -> Iterator[tuple[str, str]]:
    """Every string in a YAML document with its dotted location."""
    if isinstance(node, str):
        yield where, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from strings(value, f"{where}[{index}]")


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    """A service's environment in either Compose syntax (mapping or list of KEY=value)."""
    env = service.get("environment") or {}
    if isinstance(env, dict):
        return {key: None if value is None else str(value) for key, value in env.items()}
    pairs = (item.partition("=") for item in env)
    return {key: value if sep else None for key, sep, value in pairs}


# ---- schemas ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "path"),
    [
        ("vendor.compose-spec", COMPOSE),
        *(
            ("vendor.github-workflows", path)
            for path in sorted({CI, RELEASE, *WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")})
        ),
    ],
    ids=lambda value: value.name if isinstance(value, Path) else value,
)
def test_file_matches_its_published_schema(schema: str, path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---- docker-compose.yml: secrets -----------------------------------------------------------------


def compose_secret_problems(document: dict[str, Any]) -> list[str]:
    """Passwords and keys come from the environment only: no literal, no default value."""
    problems = []
    for where, text in strings(document):
        for match in INTERPOLATION.finditer(text):
            if SECRET_NAME.search(match["name"]) and match["op"] != ":?":
                problems.append(f"{where}: {match[0]} must be ${{{match['name']}:?message}}")
        for match in URL_PASSWORD.finditer(text):
            if not REQUIRED_VARIABLE.fullmatch(match["password"]):
                problems.append(f"{where}: URL password {match['password']!r} is not ${{VAR:?...}}")
    for name, service in document.get("services", {}).items():
        for key, value in environment(service).items():
            literal = value is not None and not REQUIRED_VARIABLE.fullmatch(value)
            if SECRET_NAME.search(key) and literal:
                problems.append(f"services.{name}.environment.{key}={value!r} is not required")
    return problems


def test_compose_takes_every_secret_from_the_environment_without_default() -> None:
    assert compose_secret_problems(load_yaml(COMPOSE)) == []


def test_compose_postgres_password_is_required() -> None:
    env = environment(load_yaml(COMPOSE)["services"]["postgres"])
    assert REQUIRED_VARIABLE.fullmatch(env["POSTGRES_PASSWORD"] or "")


@pytest.mark.parametrize(
    ("service", "key", "value"),
    [
        ("postgres", "POSTGRES_PASSWORD", "${POSTGRES_PASSWORD:-postgres}"),
        ("postgres", "POSTGRES_PASSWORD", "hunter2"),
        ("server", "DATABASE_URL", "postgresql+asyncpg://kasparro:hunter2@postgres:5432/kasparro"),
        ("worker", "DATABASE_URL", "postgresql+asyncpg://u:${PGPASS-x}@postgres:5432/kasparro"),
        ("server", "COINGECKO_API_KEY", "${COINGECKO_API_KEY:-demo-key}"),
        ("server", "KASPARRO_API_KEYS", "let-me-in"),
    ],
)
def test_secret_rule_rejects_a_default_or_literal(service: str, key: str, value: str) -> None:
    document = copy.deepcopy(load_yaml(COMPOSE))
    document["services"][service]["environment"] = {**environment(document["services"][service])}
    document["services"][service]["environment"][key] = value
    assert compose_secret_problems(document)


# ---- docker-compose.yml: structure ---------------------------------------------------------------


def compose_order_problems(document: dict[str, Any]) -> list[str]:
    """migrate runs once PostgreSQL is healthy; server and worker only after it succeeded."""
    services = document["services"]
    problems = []
    expected = {
        "migrate": {"postgres": "service_healthy"},
        "server": {"migrate": "service_completed_successfully", "redis": "service_healthy"},
        "worker": {"migrate": "service_completed_successfully", "redis": "service_healthy"},
    }
    for name, conditions in expected.items():
        depends = services[name].get("depends_on") or {}
        if isinstance(depends, list):
            depends = {dependency: {"condition": "service_started"} for dependency in depends}
        for dependency, condition in conditions.items():
            actual = (depends.get(dependency) or {}).get("condition")
            if actual != condition:
                problems.append(f"{name} depends on {dependency} with {actual}, not {condition}")
    if services["migrate"].get("restart") != "no":
        problems.append(f"migrate restart is {services['migrate'].get('restart')!r}, not 'no'")
    return problems


def test_server_and_worker_start_after_migrations_complete() -> None:
    assert compose_order_problems(load_yaml(COMPOSE)) == []


@pytest.mark.parametrize(
    ("service", "dependency", "condition"),
    [
        ("server", "migrate", "service_started"),
        ("worker", "migrate", None),
        ("migrate", "postgres", "service_started"),
    ],
)
def test_order_rule_rejects_a_weaker_dependency(
    service: str, dependency: str, condition: str | None
) -> None:
    document = copy.deepcopy(load_yaml(COMPOSE))
    depends = dict(document["services"][service]["depends_on"])
    if condition is None:
        del depends[dependency]
    else:
        depends[dependency] = {"condition": condition}
    document["services"][service]["depends_on"] = depends
    assert compose_order_problems(document)


def published_ports(entry: object) -> tuple[int | None, int]:
    """(host, container) of a Compose port: "8000", "8000:8000", "127.0.0.1:8000:8000/tcp"."""
    if isinstance(entry, dict):
        published = entry.get("published")
        return (None if published is None else int(published), int(entry["target"]))
    parts = str(entry).split("/")[0].rsplit(":", 2)
    container = int(parts[-1])
    return (int(parts[-2]) if len(parts) > 1 else None, container)


# Tools of the `observability` profile publish their own UI port, on the loopback address only.
OBSERVABILITY_PORTS = {"prometheus": 9090, "grafana": 3000}
# The `scale` profile's balancer listens on 8000 like a server, published on another host port
# (the single `server` keeps 8000 on the host).
BALANCER_PORT = 8080


def compose_port_problems(document: dict[str, Any]) -> list[str]:
    """The service listens on 8000 everywhere; nothing else is published (but the observability
    tools' own ports on 127.0.0.1)."""
    problems = []
    for name, service in document["services"].items():
        if "observability" in service.get("profiles", []) and name in OBSERVABILITY_PORTS:
            for entry in service.get("ports", []):
                own = OBSERVABILITY_PORTS[name]
                if str(entry) != f"127.0.0.1:{own}:{own}":
                    problems.append(f"{name} port {entry!r} is not 127.0.0.1:{own}:{own}")
            continue
        for entry in [*service.get("ports", []), *service.get("expose", [])]:
            host, container = published_ports(entry)
            if name == "balancer" and (host, container) == (BALANCER_PORT, PORT):
                continue
            if container != PORT or host not in (None, PORT):
                problems.append(f"{name} port {entry!r} is not {PORT}")
        port = environment(service).get("KASPARRO_PORT")
        if port is not None and port != str(PORT):
            problems.append(f"{name} KASPARRO_PORT={port}")
        for where, text in strings(service.get("healthcheck", {})):
            for url_port in re.findall(r"http://[^/:\s]+:(\d+)", text):
                if int(url_port) != PORT:
                    problems.append(f"{name}.healthcheck.{where} probes port {url_port}")
    return problems


def test_every_compose_port_is_8000() -> None:
    document = load_yaml(COMPOSE)
    assert compose_port_problems(document) == []
    assert [published_ports(p) for p in document["services"]["server"]["ports"]] == [(PORT, PORT)]


@pytest.mark.parametrize(
    ("service", "key", "value"),
    [
        ("server", "ports", ["8080:8000"]),
        ("server", "ports", ["8000:8080"]),
        ("postgres", "ports", ["5432:5432"]),
        ("redis", "ports", [{"target": 6379, "published": 6379}]),
        ("grafana", "ports", ["3000:3000"]),
        ("prometheus", "ports", ["0.0.0.0:9090:9090"]),
        ("balancer", "ports", ["8080:8080"]),
        ("balancer", "ports", ["8081:8000"]),
        ("servers", "ports", ["8080:8000"]),
    ],
)
def test_port_rule_rejects_another_port(service: str, key: str, value: object) -> None:
    document = copy.deepcopy(load_yaml(COMPOSE))
    document["services"][service][key] = value
    assert compose_port_problems(document)


def test_compose_services_run_their_roles() -> None:
    services = load_yaml(COMPOSE)["services"]
    assert services["migrate"]["command"] == ["kasparro", "migrate"]
    assert services["server"]["command"] == ["kasparro", "serve"]
    assert services["worker"]["command"] == ["kasparro", "worker"]
    # One shared environment (the x- anchor) for the three roles of the image.
    assert environment(services["server"]) == environment(services["worker"])
    assert environment(services["server"]) == environment(services["migrate"])
    assert environment(services["server"])["REDIS_URL"] == "redis://redis:6379/0"
    assert "@postgres:5432/" in (environment(services["server"])["DATABASE_URL"] or "")
    # The image's HEALTHCHECK probes HTTP: roles without a server must not inherit it.
    assert services["worker"]["healthcheck"] == {"disable": True}
    assert services["migrate"]["healthcheck"] == {"disable": True}
    assert "/healthz" in " ".join(services["server"]["healthcheck"]["test"])


def test_compose_backing_services_are_healthchecked_with_persistent_data() -> None:
    document = load_yaml(COMPOSE)
    postgres, redis = document["services"]["postgres"], document["services"]["redis"]
    assert postgres["image"] == "postgres:16-alpine"
    assert "pg_isready" in postgres["healthcheck"]["test"]
    assert redis["image"] == "redis:7-alpine"
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
    volume = postgres["volumes"][0].split(":")[0]
    assert volume in document["volumes"], "PostgreSQL data must live in a named volume"


def test_compose_test_profile_runs_pytest_against_compose_services() -> None:
    test = load_yaml(COMPOSE)["services"]["test"]
    assert test["profiles"] == ["test"]
    assert test["build"]["target"] == "test"
    env = environment(test)
    assert "@postgres:5432/" in (env["KASPARRO_TEST_POSTGRES_URL"] or "")
    assert (env["KASPARRO_TEST_REDIS_URL"] or "").startswith("redis://redis:6379/")
    assert test["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert test["depends_on"]["redis"]["condition"] == "service_healthy"


# ---- Dockerfile ----------------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args_of(self, instruction: str) -> list[str]:
        return [args for name, args in self.instructions if name == instruction]


def dockerfile_stages(text: str) -> list[Stage]:
    """The stages of a Dockerfile, with global ARG defaults substituted into FROM."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    logical, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    for line in logical:
        instruction, _, rest = line.partition(" ")
        instruction, rest = instruction.upper(), rest.strip()
        if instruction == "FROM":
            words = rest.split()
            words = [word for word in words if not word.startswith("--")]
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m[1], m[0]), words[0])
            name = words[2] if len(words) > 2 and words[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=name))
        elif not stages:
            if instruction == "ARG" and "=" in rest:
                key, _, value = rest.partition("=")
                args[key] = value
        else:
            stages[-1].instructions.append((instruction, rest))
    return stages


def env_pairs(stage: Stage) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for args in stage.args_of("ENV"):
        for word in shlex.split(args):
            key, _, value = word.partition("=")
            pairs[key] = value
    return pairs


def exec_form(args: str) -> list[str]:
    """CMD/ENTRYPOINT arguments as argv: JSON (exec form) or, failing that, shell words."""
    try:
        argv = json.loads(args)
    except json.JSONDecodeError:
        return shlex.split(args)
    return argv if isinstance(argv, list) else [str(argv)]


def final_stage_problems(text: str) -> list[str]:
    """The image that runs: slim, runtime only, non-root, health-checked, serving on 8000."""
    stages = dockerfile_stages(text)
    final = stages[-1]
    problems = []
    if final.base != "python:3.12-slim":
        problems.append(f"final stage is based on {final.base}")
    users = final.args_of("USER")
    if not users or users[-1].split(":")[0] in {"root", "0"}:
        problems.append(f"final stage runs as root (USER {users[-1] if users else 'missing'})")
    checks = final.args_of("HEALTHCHECK")
    if not checks or checks[-1].upper() == "NONE":
        problems.append("final stage has no HEALTHCHECK")
    elif f"http://127.0.0.1:{PORT}/healthz" not in checks[-1] or "urllib" not in checks[-1]:
        problems.append(f"HEALTHCHECK does not GET /healthz on {PORT} with urllib: {checks[-1]}")
    exposed = {port.split("/")[0] for args in final.args_of("EXPOSE") for port in args.split()}
    if exposed != {str(PORT)}:
        problems.append(f"final stage exposes {sorted(exposed)}, not {PORT}")
    env = env_pairs(final)
    expected_env = {"KASPARRO_HOST": "0.0.0.0", "KASPARRO_PORT": str(PORT), "PYTHONUNBUFFERED": "1"}
    for key, value in expected_env.items():
        if env.get(key) != value:
            problems.append(f"final stage ENV {key}={env.get(key)!r}, not {value!r}")
    commands = final.args_of("CMD")
    if not commands or exec_form(commands[-1]) != ["kasparro", "serve"]:
        problems.append(f"final stage CMD is {commands[-1:]}, not kasparro serve")
    earlier = {stage.name for stage in stages[:-1]}
    sources = {m[1] for args in final.args_of("COPY") for m in re.finditer(r"--from=(\S+)", args)}
    if not sources & earlier:
        problems.append("final stage copies nothing from a build stage")
    if any("pip install" in command for command in final.args_of("RUN")):
        problems.append("final stage installs packages itself instead of copying the build")
    return problems


def test_dockerfile_final_stage_is_a_non_root_healthchecked_server_on_8000() -> None:
    assert final_stage_problems(DOCKERFILE.read_text()) == []


@pytest.mark.parametrize(
    "appended",
    [
        "USER root",
        "USER 0:0",
        "HEALTHCHECK NONE",
        "EXPOSE 8080",
        'CMD ["kasparro", "up"]',
        "FROM python:3.12-slim AS unchecked\nRUN pip install kasparro\nUSER 10001\nEXPOSE 8000",
    ],
)
def test_final_stage_rule_rejects_a_broken_dockerfile(appended: str) -> None:
    assert final_stage_problems(DOCKERFILE.read_text() + "\n" + appended + "\n")


def probe_exit_code(argv: list[str], status: int | None) -> int:
    """Run an exec-form `python -c CODE` health check against a stand-in /healthz.

    `status` is what /healthz answers; None means nothing listens. The probe's port 8000 is
    redirected to a free port, so the check runs while 8000 is in use.
    """
    assert argv[:2] == ["python", "-c"], f"health check is not `python -c ...`: {argv}"
    code = argv[2]
    assert f"127.0.0.1:{PORT}/healthz" in code

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status if self.path == "/healthz" and status else 404)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), Handler) as server:
        port = server.server_address[1]
        if status is None:
            server.server_close()  # the port stays free: connection refused
        else:
            threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            code = code.replace(f"127.0.0.1:{PORT}/", f"127.0.0.1:{port}/")
            result = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, timeout=30, check=False
            )
        finally:
            if status is not None:
                server.shutdown()
    return result.returncode


def healthchecks() -> dict[str, list[str]]:
    final = dockerfile_stages(DOCKERFILE.read_text())[-1]
    dockerfile = final.args_of("HEALTHCHECK")[-1].split(" CMD ", 1)[1]
    compose = load_yaml(COMPOSE)["services"]["server"]["healthcheck"]["test"]
    assert compose[0] == "CMD"
    return {"Dockerfile": exec_form(dockerfile), "compose server": compose[1:]}


@pytest.mark.parametrize("source", ["Dockerfile", "compose server"])
@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False), (None, False)])
def test_healthcheck_passes_only_when_healthz_answers_ok(
    source: str, status: int | None, healthy: bool
) -> None:
    assert (probe_exit_code(healthchecks()[source], status) == 0) is healthy


def test_dockerfile_test_stage_has_test_extras_and_redis_server() -> None:
    stages = {stage.name: stage for stage in dockerfile_stages(DOCKERFILE.read_text())}
    runs = " ".join(stages["test"].args_of("RUN"))
    assert "redis-server" in runs
    assert ".[test]" in runs


def test_every_build_target_is_a_dockerfile_stage() -> None:
    names = {stage.name for stage in dockerfile_stages(DOCKERFILE.read_text())}
    targets = {
        service["build"]["target"]
        for service in load_yaml(COMPOSE)["services"].values()
        if isinstance(service.get("build"), dict)
    }
    for job in load_yaml(RELEASE)["jobs"].values():
        targets |= {
            step["with"]["target"] for step in job["steps"] if "target" in step.get("with", {})
        }
    assert targets
    assert targets <= names


# ---- .env.example --------------------------------------------------------------------------------

ASSIGNMENT = re.compile(r"^(?P<commented>#\s*)?(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>.*)$")


@dataclass
class EnvEntry:
    name: str
    value: str
    commented: bool
    explained: bool  # a comment line that is not itself an assignment stands right above


def env_example_entries(text: str) -> list[EnvEntry]:
    entries = []
    previous = ""
    for line in text.splitlines():
        match = ASSIGNMENT.match(line.strip())
        if match:
            entries.append(
                EnvEntry(
                    name=match["name"],
                    value=match["value"].strip(),
                    commented=bool(match["commented"]),
                    explained=previous.startswith("#") and not ASSIGNMENT.match(previous),
                )
            )
        previous = line.strip()
    return entries


def env_example_secret_problems(text: str) -> list[str]:
    return [
        f"{entry.name} has a value in .env.example"
        for entry in env_example_entries(text)
        if SECRET_NAME.search(entry.name) and entry.value
    ]


def test_env_example_holds_no_secret_value() -> None:
    text = ENV_EXAMPLE.read_text()
    assert env_example_secret_problems(text) == []
    entries = {entry.name: entry for entry in env_example_entries(text)}
    assert not entries["POSTGRES_PASSWORD"].commented, "POSTGRES_PASSWORD= must be there to fill in"


@pytest.mark.parametrize(
    "line",
    ["POSTGRES_PASSWORD=postgres", "# COINGECKO_API_KEY=CG-abc123", "KASPARRO_API_KEYS=k1,k2"],
)
def test_env_example_rule_rejects_a_secret_value(line: str) -> None:
    assert env_example_secret_problems(ENV_EXAMPLE.read_text() + line + "\n")


def test_env_example_documents_every_variable() -> None:
    entries = env_example_entries(ENV_EXAMPLE.read_text())
    documented = {entry.name for entry in entries}
    compose = load_yaml(COMPOSE)
    interpolated = {
        match["name"] for _, text in strings(compose) for match in INTERPOLATION.finditer(text)
    }
    passed_through = {
        key
        for service in compose["services"].values()
        for key, value in environment(service).items()
        if value is None
    }
    assert CONTRACT_VARIABLES | interpolated | passed_through <= documented
    assert [entry.name for entry in entries if not entry.explained] == []
    assert len(documented) == len(entries), "a variable is listed twice"


# ---- workflows -----------------------------------------------------------------------------------


def triggers(workflow: dict[str, Any]) -> dict[str, Any]:
    # YAML 1.1 (PyYAML) reads the bare key `on` as the boolean true.
    on = workflow.get("on", workflow.get(True))
    if isinstance(on, str):
        return {on: None}
    if isinstance(on, list):
        return dict.fromkeys(on)
    assert isinstance(on, dict)
    return on


def workflow_secret_problems(workflow: dict[str, Any]) -> list[str]:
    """A workflow names no literal secret: values of secret-like keys come from `secrets.`."""
    problems = []
    for where, text in strings(workflow):
        key = where.rsplit(".", 1)[-1]
        if SECRET_NAME.search(key.upper()) and not re.fullmatch(
            r"\$\{\{\s*secrets\.\w+\s*\}\}", text
        ):
            problems.append(f"{where}={text!r}")
    return problems


def run_steps(job: dict[str, Any]) -> list[str]:
    return [step["run"] for step in job["steps"] if "run" in step]


def test_ci_tests_on_both_pythons_against_passwordless_service_containers() -> None:
    workflow = load_yaml(CI)
    assert {"push", "pull_request"} <= set(triggers(workflow))
    test = workflow["jobs"]["test"]
    assert test["runs-on"] == "ubuntu-latest"
    assert {"3.11", "3.12"} <= {str(v) for v in test["strategy"]["matrix"]["python-version"]}
    postgres, redis = test["services"]["postgres"], test["services"]["redis"]
    assert postgres["image"] == "postgres:16"
    assert postgres["env"] == {"POSTGRES_HOST_AUTH_METHOD": "trust"}
    assert redis["image"] == "redis:7"
    assert "--health-cmd" in postgres["options"]
    assert "--health-cmd" in redis["options"]
    # The test URLs reach the service containers through their published host ports.
    for variable, service in [
        ("KASPARRO_TEST_POSTGRES_URL", postgres),
        ("KASPARRO_TEST_REDIS_URL", redis),
    ]:
        url_port = re.search(r"@?127\.0\.0\.1:(\d+)/", test["env"][variable])
        assert url_port, f"{variable} does not point at the runner"
        host_ports = {str(entry).split(":")[0] for entry in service["ports"]}
        assert url_port[1] in host_ports, f"{variable} port is not a published service port"
    runs = run_steps(test)
    install = next(i for i, run in enumerate(runs) if "apt-get install" in run)
    assert "redis-server" in runs[install]
    assert runs.index("bash .ci/run") > install
    assert workflow_secret_problems(workflow) == []


def test_ci_lints_with_ruff_mypy_and_the_import_floors() -> None:
    runs = " && ".join(run_steps(load_yaml(CI)["jobs"]["lint"]))
    assert "ruff check" in runs
    assert "ruff format --check" in runs
    assert re.search(r"\bmypy\b", runs)
    assert re.search(r"\blint-imports\b", runs)


def test_release_pushes_the_image_to_ghcr_on_version_tags() -> None:
    workflow = load_yaml(RELEASE)
    assert triggers(workflow)["push"]["tags"] == ["v*"]
    assert workflow["permissions"]["packages"] == "write"
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    used = {step["uses"].split("@")[0]: step for step in steps if "uses" in step}
    for action in ("setup-buildx-action", "login-action", "metadata-action", "build-push-action"):
        assert f"docker/{action}" in used, f"docker/{action} is not used"
    login = used["docker/login-action"]["with"]
    assert login["registry"] == "ghcr.io"
    assert login["password"] == "${{ secrets.GITHUB_TOKEN }}"
    assert used["docker/metadata-action"]["with"]["images"].startswith("ghcr.io/")
    assert used["docker/build-push-action"]["with"]["push"] is True
    assert workflow_secret_problems(workflow) == []


def test_workflow_secret_rule_rejects_a_literal_password() -> None:
    workflow = copy.deepcopy(load_yaml(CI))
    workflow["jobs"]["test"]["services"]["postgres"]["env"]["POSTGRES_PASSWORD"] = "postgres"
    assert workflow_secret_problems(workflow)


# ---- Makefile ------------------------------------------------------------------------------------


def test_makefile_declares_its_targets_phony() -> None:
    phony = set()
    for line in MAKEFILE.read_text().splitlines():
        if line.startswith(".PHONY:"):
            phony |= set(line.partition(":")[2].split())
    assert {"up", "down", "test", "logs", "help"} <= phony


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_up_explains_a_missing_env_file(tmp_path: Path) -> None:
    shutil.copy(MAKEFILE, tmp_path / "Makefile")
    # COMPOSE=echo: nothing is started, the command Make would run is printed instead.
    command = ["make", "--no-print-directory", "up", "COMPOSE=echo compose"]

    missing = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert missing.returncode != 0
    assert ".env.example" in missing.stderr
    assert "compose up" not in missing.stdout

    (tmp_path / ".env").write_text("POSTGRES_PASSWORD=\n")
    present = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert present.returncode == 0, present.stderr
    assert "compose up -d --build" in present.stdout


# ---- docker-compose.yml: the scale profile -------------------------------------------------------

SCALE_SERVICES = ("balancer", "servers", "workers", "postgres-replica")
HAPROXY_CFG_MOUNT = "./deploy/haproxy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro"
# What only the balanced servers set differently from `server`.
SCALED_SERVER_VARIABLES = {"DATABASE_READ_URL", "KASPARRO_TRUSTED_PROXIES"}


def depends_problems(name: str, service: dict[str, Any], expected: dict[str, str]) -> list[str]:
    depends = service.get("depends_on") or {}
    if isinstance(depends, list):
        depends = {dependency: {"condition": "service_started"} for dependency in depends}
    return [
        f"{name} depends on {dependency} with {actual}, not {condition}"
        for dependency, condition in expected.items()
        if (actual := (depends.get(dependency) or {}).get("condition")) != condition
    ]


def replicas(service: dict[str, Any]) -> int:
    return int((service.get("deploy") or {}).get("replicas", 1))


def compose_scale_problems(document: dict[str, Any], haproxy: HaproxyConfig) -> list[str]:
    """`--profile scale`: HAProxy (this repository's configuration) in front of several server
    replicas that read from a streaming replica of PostgreSQL, and several workers."""
    services = document["services"]
    problems = [
        f"{name} is not a service of the scale profile only"
        for name in SCALE_SERVICES
        if name not in services or services[name].get("profiles") != ["scale"]
    ]
    if problems:
        return problems
    servers, workers = services["servers"], services["workers"]
    balancer, replica = services["balancer"], services["postgres-replica"]
    after_migrate = {"migrate": "service_completed_successfully", "redis": "service_healthy"}

    if servers.get("command") != ["kasparro", "serve"]:
        problems.append(f"servers run {servers.get('command')}")
    if workers.get("command") != ["kasparro", "worker"]:
        problems.append(f"workers run {workers.get('command')}")
    for name, service in (("servers", servers), ("workers", workers)):
        if replicas(service) < 2:
            problems.append(f"{name} run {replicas(service)} replica(s), not several")
    if servers.get("ports"):
        problems.append("servers publish a port: only the balancer may reach them")
    env, base = environment(servers), environment(services["server"])
    if "@postgres-replica:5432/" not in (env.get("DATABASE_READ_URL") or ""):
        problems.append(f"servers read from {env.get('DATABASE_READ_URL')!r}, not the replica")
    differing = {key for key in env.keys() | base.keys() if env.get(key) != base.get(key)}
    if differing - SCALED_SERVER_VARIABLES:
        problems.append(f"servers differ from server in {sorted(differing)}")
    problems += depends_problems(
        "servers", servers, {**after_migrate, "postgres-replica": "service_healthy"}
    )
    problems += depends_problems("workers", workers, after_migrate)

    if not str(balancer.get("image", "")).startswith("haproxy:"):
        problems.append(f"the balancer runs {balancer.get('image')}")
    if HAPROXY_CFG_MOUNT not in balancer.get("volumes", []):
        problems.append("the balancer does not run deploy/haproxy/haproxy.cfg")
    templates = haproxy.section("backend", BACKEND).all("server-template")
    resolved = [words for words in templates if words[3:4] == [f"servers:{PORT}"]]
    if not resolved or int(resolved[0][2]) < replicas(servers):
        problems.append(f"the balancer's backend does not resolve servers:{PORT}: {templates}")

    script = " ".join(replica.get("entrypoint") or [])
    for needed in (
        "pg_basebackup",
        "--host=postgres",
        "--write-recovery-conf",
        "--wal-method=stream",
        "exec docker-entrypoint.sh postgres",
    ):
        if needed not in script:
            problems.append(f"postgres-replica's entrypoint lacks {needed!r}")
    if replica.get("image") != services["postgres"]["image"]:
        problems.append("postgres-replica runs another PostgreSQL than the primary")
    if not any(v.split(":")[0] in document["volumes"] for v in replica.get("volumes", [])):
        problems.append("postgres-replica keeps its data outside a named volume")
    if "pg_isready" not in replica.get("healthcheck", {}).get("test", []):
        problems.append("postgres-replica is not health-checked with pg_isready")
    problems += depends_problems("postgres-replica", replica, {"postgres": "service_healthy"})
    # The primary lets it stream: a pg_hba.conf line for replication, added at initialisation.
    hba = [
        document.get("configs", {}).get(mount["source"], {}).get("content", "")
        for mount in services["postgres"].get("configs", [])
        if str(mount.get("target", "")).startswith("/docker-entrypoint-initdb.d/")
    ]
    if not any("host replication" in content for content in hba):
        problems.append("the primary accepts no replication connection")
    return problems


def deploy_haproxy() -> HaproxyConfig:
    return HaproxyConfig.parse(DEPLOY_CONFIG.read_text())


def test_compose_scale_profile_balances_server_replicas_on_a_read_replica() -> None:
    assert compose_scale_problems(load_yaml(COMPOSE), deploy_haproxy()) == []


def set_path(document: dict[str, Any], path: str, value: object) -> None:
    """Set the dotted `path` of `document` to `value`; delete it when `value` is None."""
    *parents, key = path.split(".")
    node = document
    for parent in parents:
        node = node[parent]
    if value is None:
        del node[key]
    else:
        node[key] = value


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("services.servers.profiles", None),
        ("services.servers.deploy", {"replicas": 1}),
        ("services.workers.deploy", None),
        ("services.servers.ports", ["8000:8000"]),
        ("services.servers.environment.DATABASE_READ_URL", None),
        ("services.servers.environment.KASPARRO_SOURCES", "csv"),
        ("services.servers.depends_on", {"migrate": {"condition": "service_started"}}),
        ("services.balancer.volumes", []),
        ("services.postgres-replica.entrypoint", ["docker-entrypoint.sh", "postgres"]),
        ("services.postgres-replica.image", "postgres:15-alpine"),
        ("services.postgres.configs", []),
    ],
)
def test_scale_rule_rejects_a_broken_profile(path: str, value: object) -> None:
    document = copy.deepcopy(load_yaml(COMPOSE))
    servers = document["services"]["servers"]
    servers["environment"] = dict(environment(servers))
    set_path(document, path, value)
    assert compose_scale_problems(document, deploy_haproxy())


def test_scale_rule_rejects_a_backend_that_resolves_another_name() -> None:
    text = DEPLOY_CONFIG.read_text().replace(f"servers:{PORT}", f"server:{PORT}")
    assert compose_scale_problems(load_yaml(COMPOSE), HaproxyConfig.parse(text))


# ---- deploy/haproxy/haproxy.cfg ------------------------------------------------------------------

WS_KEEPALIVE = float(Settings.model_fields["ws_keepalive"].default)


def haproxy_problems(config: HaproxyConfig) -> list[str]:
    """WebSockets pass through and live as long as keepalive pings flow; replicas are checked
    on /readyz; a dead replica's connections are redispatched; clients cannot forge their
    address."""
    defaults = config.section("defaults")
    frontend = config.section("frontend", FRONTEND)
    backend = config.section("backend", BACKEND)
    problems = []
    if defaults.first("mode") != ["mode", "http"]:
        problems.append(f"defaults mode is {defaults.first('mode')}, not http")
    for name in ("connect", "client", "server", "tunnel"):
        if defaults.first("timeout", name) is None:
            problems.append(f"no timeout {name}")
    tunnel = defaults.first("timeout", "tunnel")
    if tunnel is not None and seconds(tunnel[2]) < 4 * WS_KEEPALIVE:
        problems.append(f"timeout tunnel {tunnel[2]} cuts WebSockets between keepalive pings")
    lines = defaults.lines + backend.lines
    if ["option", "httpchk"] not in [line[:2] for line in lines]:
        problems.append("no HTTP health check (option httpchk)")
    requests = [
        line for line in lines if line[:2] in (["http-check", "send"], ["option", "httpchk"])
    ]
    if not any("/readyz" in line for line in requests):
        problems.append(f"health checks do not ask /readyz: {requests}")
    if ["http-check", "expect", "status", "200"] not in lines:
        problems.append("health checks do not expect status 200")
    servers = backend.all("server") + backend.all("server-template")
    checked = any("check" in line for line in backend.all("default-server"))
    if not servers or not (checked or all("check" in line for line in servers)):
        problems.append("the backend's servers are not health-checked")
    if not any(line[:2] == ["option", "redispatch"] for line in lines):
        problems.append("no option redispatch: a dead replica's retries stay on it")
    if not any(words[:1] == ["bind"] and words[1].endswith(f":{PORT}") for words in frontend.lines):
        problems.append(f"the frontend does not listen on {PORT}")
    if frontend.first("default_backend") != ["default_backend", BACKEND]:
        problems.append(f"the frontend does not send to {BACKEND}")
    if ["option", "forwardfor"] not in defaults.lines + frontend.lines:
        problems.append("the servers are not told the client's address (option forwardfor)")
    if ["http-request", "del-header", "X-Forwarded-For"] not in frontend.lines:
        problems.append("a client's own X-Forwarded-For reaches the servers")
    return problems


def test_haproxy_passes_websockets_and_checks_readiness() -> None:
    assert haproxy_problems(deploy_haproxy()) == []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("timeout tunnel 1h", "timeout tunnel 30s"),
        ("timeout tunnel 1h", ""),
        ("uri /readyz", "uri /healthz"),
        ("http-check expect status 200", ""),
        ("default-server check ", "default-server "),
        ("option redispatch 1", ""),
        ("bind :8000", "bind :8080"),
        ("http-request del-header X-Forwarded-For", ""),
        ("mode http", "mode tcp"),
    ],
)
def test_haproxy_rule_rejects_a_weaker_config(old: str, new: str) -> None:
    text = DEPLOY_CONFIG.read_text()
    assert old in text
    assert haproxy_problems(HaproxyConfig.parse(text.replace(old, new)))


def haproxy_check(path: Path) -> subprocess.CompletedProcess[str]:
    binary = haproxy_binary()
    if binary is None:
        pytest.skip("haproxy is not installed")
    return subprocess.run(
        [binary, "-c", "-f", str(path)], capture_output=True, text=True, check=False, timeout=30
    )


def test_haproxy_accepts_the_configuration() -> None:
    result = haproxy_check(DEPLOY_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr


def test_haproxy_check_rejects_a_broken_configuration(tmp_path: Path) -> None:
    broken = tmp_path / "haproxy.cfg"
    broken.write_text(DEPLOY_CONFIG.read_text().replace("timeout tunnel 1h", "timeout tunnel 1x"))
    assert haproxy_check(broken).returncode != 0
