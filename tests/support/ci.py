"""What a test needs from the machine: skipped on a developer's machine, required under CI."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def under_ci() -> bool:
    """CI=true: the set-up (.ci/run, the CI workflow) had to provide everything."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def unavailable(reason: str) -> NoReturn:
    """Skip with `reason`; under CI fail instead, since the set-up should have provided it."""
    if under_ci():
        pytest.fail(f"{reason} (CI=true: .ci/run must provide it)")
    pytest.skip(reason)
