"""tests/_deps.require: a missing optional dependency skips on a bare checkout, fails under CI."""

from __future__ import annotations

import sys

import pytest
from _deps import require, strict

MISSING = "sglang_trimode_no_such_module"


@pytest.fixture
def broken_module(tmp_path, monkeypatch):
    """A module that is installed but fails to import (a broken install), on sys.path."""
    (tmp_path / "sglang_trimode_broken.py").write_text("raise ImportError('libfoo.so missing')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "sglang_trimode_broken"
    sys.modules.pop("sglang_trimode_broken", None)


@pytest.mark.parametrize("value", ["true", "1", "TRUE", "yes"])
def test_ci_true_fails_on_a_missing_module(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    assert strict()
    with pytest.raises(pytest.fail.Exception, match=f"CI=true: {MISSING} must import"):
        require(MISSING, "installed by scripts/test.sh")


def test_ci_true_fails_on_a_broken_install(monkeypatch, broken_module):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="ImportError: libfoo.so missing"):
        require(broken_module, "installed by scripts/test.sh")


@pytest.mark.parametrize("value", [None, "", "false", "0"])
def test_without_ci_a_missing_module_skips_with_the_reason(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert not strict()
    with pytest.raises(pytest.skip.Exception, match="installed by scripts/test.sh"):
        require(MISSING, "installed by scripts/test.sh")


def test_a_present_module_is_returned_either_way(monkeypatch):
    for value in ("true", "false"):
        monkeypatch.setenv("CI", value)
        assert require("json", "stdlib").dumps([1]) == "[1]"
