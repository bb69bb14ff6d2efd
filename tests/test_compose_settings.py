"""Compose passes every variable of the service to every container that reads them.

The list of variables is read from the Settings model itself, so a setting added later is caught
here until docker-compose.yml passes it and .env.example documents it.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from server.settings import Settings
from tests.test_deploy_files import (
    COMPOSE,
    ENV_EXAMPLE,
    REQUIRED_VARIABLE,
    SECRET_NAME,
    env_example_entries,
    environment,
    load_yaml,
)

# Set by Compose itself, not from .env: the services it starts, and the address that the
# published port and the health check expect.
FIXED_BY_COMPOSE = {
    "DATABASE_URL": None,
    "REDIS_URL": None,
    "KASPARRO_HOST": "0.0.0.0",
    "KASPARRO_PORT": "8000",
}
# Set by Compose in one service only: the `scale` profile's servers read from its replica.
FIXED_IN_SERVICE: dict[str, dict[str, str | None]] = {"servers": {"DATABASE_READ_URL": None}}


def setting_variables() -> dict[str, bool]:
    """Every variable the service reads -> whether it holds a secret."""
    variables = {}
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        assert isinstance(alias, str), f"Settings.{name} has no single variable name"
        secret = "SecretStr" in repr(field.annotation) or bool(SECRET_NAME.search(alias))
        variables[alias] = secret
    return variables


def settings_services(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run `kasparro` (and so read the settings)."""
    services = {
        name: service
        for name, service in document["services"].items()
        if isinstance(service.get("command"), list) and service["command"][:1] == ["kasparro"]
    }
    assert {"migrate", "server", "worker", "servers", "workers"} <= set(services)
    return services


def compose_settings_problems(document: dict[str, Any]) -> list[str]:
    problems = []
    variables = setting_variables()
    for name, service in settings_services(document).items():
        env = environment(service)
        fixed = {**FIXED_BY_COMPOSE, **FIXED_IN_SERVICE.get(name, {})}
        for variable, secret in variables.items():
            if variable not in env:
                problems.append(f"services.{name} does not pass {variable}")
                continue
            value = env[variable]
            if variable in fixed:
                expected = fixed[variable]
                if expected is not None and value != expected:
                    problems.append(f"services.{name}.{variable}={value!r}, not {expected!r}")
            elif secret and value is not None and not REQUIRED_VARIABLE.fullmatch(value):
                problems.append(f"services.{name}.{variable}={value!r}: a secret with a value")
            elif value is not None and f"${{{variable}" not in value:
                # A literal would override whatever .env says.
                problems.append(f"services.{name}.{variable}={value!r} ignores .env")
    return problems


def test_setting_variables_are_read_from_the_model() -> None:
    variables = setting_variables()
    assert {"KASPARRO_REQUIRE_READ_KEY", "KASPARRO_INTROSPECTION", "KASPARRO_API_KEYS"} <= set(
        variables
    )
    assert variables["KASPARRO_API_KEYS"]
    assert variables["KASPARRO_SMTP_PASSWORD"]
    assert variables["KASPARRO_ALERT_WEBHOOK_URL"]
    assert not variables["KASPARRO_MAX_QUERY_BYTES"]


def test_compose_passes_every_setting_to_every_service_that_reads_settings() -> None:
    assert compose_settings_problems(load_yaml(COMPOSE)) == []


@pytest.mark.parametrize(
    ("service", "variable", "value"),
    [
        ("server", "KASPARRO_REQUIRE_READ_KEY", ...),
        ("worker", "KASPARRO_WS_MAX_CONNECTIONS", ...),
        ("migrate", "KASPARRO_RATE_LIMIT_PER_MINUTE", ...),
        ("server", "KASPARRO_INTROSPECTION", "true"),
        ("server", "KASPARRO_SMTP_PASSWORD", "${KASPARRO_SMTP_PASSWORD:-changeme}"),
        ("worker", "KASPARRO_ALERT_WEBHOOK_URL", "${KASPARRO_ALERT_WEBHOOK_URL-https://x}"),
        ("server", "KASPARRO_HOST", "127.0.0.1"),
        ("servers", "KASPARRO_REQUIRE_READ_KEY", ...),
        ("servers", "KASPARRO_TRUSTED_PROXIES", "10.0.0.0/8"),
        ("workers", "KASPARRO_API_KEYS", "${KASPARRO_API_KEYS:-k1}"),
    ],
)
def test_settings_rule_rejects_a_dropped_fixed_or_defaulted_secret_variable(
    service: str, variable: str, value: object
) -> None:
    document = copy.deepcopy(load_yaml(COMPOSE))
    env = {**environment(document["services"][service])}
    if value is ...:
        del env[variable]
    else:
        env[variable] = str(value)
    document["services"][service]["environment"] = env
    assert compose_settings_problems(document)


def test_settings_rule_accepts_a_pass_through_with_a_default() -> None:
    document = copy.deepcopy(load_yaml(COMPOSE))
    env = {**environment(document["services"]["server"])}
    env["KASPARRO_MAX_QUERY_BYTES"] = "${KASPARRO_MAX_QUERY_BYTES:-10000}"
    document["services"]["server"]["environment"] = env
    assert compose_settings_problems(document) == []


def test_env_example_mentions_every_setting() -> None:
    documented = {entry.name for entry in env_example_entries(ENV_EXAMPLE.read_text())}
    assert sorted(set(setting_variables()) - documented) == []


def test_env_example_gives_no_secret_setting_a_value() -> None:
    secrets = {name for name, secret in setting_variables().items() if secret}
    valued = {
        entry.name
        for entry in env_example_entries(ENV_EXAMPLE.read_text())
        if entry.name in secrets and entry.value
    }
    assert valued == set()
