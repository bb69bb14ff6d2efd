"""Counts the cases the security suite sent and prints the total after the run:
"security fuzz: N cases". With pytest-xdist each worker hands its count to the controller,
which adds them up.

A plugin: tests/security/conftest.py registers it when pytest starts in tests/security; for a
run of the whole suite, the top-level conftest lists it in `pytest_plugins`.
"""

from __future__ import annotations

from typing import Any

import pytest

KEY = "security_fuzz_cases"
_cases = 0
_from_workers = 0


def count_case(n: int = 1) -> None:
    global _cases
    _cases += n


def cases() -> int:
    return _cases + _from_workers


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput[KEY] = _cases


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    global _from_workers
    _from_workers += int(getattr(node, "workeroutput", {}).get(KEY, 0))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if cases():
        terminalreporter.write_line(f"security fuzz: {cases()} cases")
