"""Third-party payloads recorded from the real APIs, kept beside the repository (not in it).

The folder is `../shared/fixtures/real` next to the checkout, or KASPARRO_REAL_FIXTURES. Tests
over it are parametrized by file and skipped as a whole only when the folder is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REAL_FIXTURES = Path(
    os.environ.get("KASPARRO_REAL_FIXTURES", ROOT.parent / "shared" / "fixtures" / "real")
)


def real_files(pattern: str) -> list[pytest.param]:  # type: ignore[valid-type]
    """pytest params for each real fixture matching `pattern`, or one skipped param if none."""
    files = sorted(REAL_FIXTURES.glob(pattern)) if REAL_FIXTURES.is_dir() else []
    if not files:
        return [
            pytest.param(None, marks=pytest.mark.skip(reason=f"no {pattern} in {REAL_FIXTURES}"))
        ]
    return [pytest.param(path, id=path.name) for path in files]
