"""Optional test dependencies: skipped on a bare checkout, a failure under CI.

`scripts/test.sh` (and so `.ci/run`) installs sglang, peft and the rest, so a missing or broken one
there means a broken install, which must turn CI red, not into skips. `require(name, why)` is
`pytest.importorskip` unless `CI` is true (`true`, `1`, `yes`), where it imports the module and
fails the test module (with the import error) when that does not work.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

STRICT_VALUES = ("1", "true", "yes")


def strict() -> bool:
    """True under CI (`CI=true`): optional dependencies are required."""
    return os.environ.get("CI", "").strip().lower() in STRICT_VALUES


def require(name: str, reason: str) -> ModuleType:
    """Import `name`; skip with `reason` where it is missing, or fail under `CI=true`."""
    if not strict():
        return pytest.importorskip(name, reason=reason)
    try:
        return importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - any import failure is a broken install here
        pytest.fail(
            f"CI=true: {name} must import ({reason}), but: {type(exc).__name__}: {exc}",
            pytrace=False,
        )
