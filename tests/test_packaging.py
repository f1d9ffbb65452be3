"""pyproject.toml lists its packages by hand: every package folder of the source tree must be
there, or `pip install .` (the GPU bundle, a user's install) ships a package without it."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")

ROOT = Path(__file__).resolve().parents[1]


def _listed() -> tuple[set[str], dict[str, str]]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return set(cfg["packages"]), dict(cfg.get("package-dir", {}))


def _package_name(folder: Path, dirs: dict[str, str]) -> str:
    rel = folder.relative_to(ROOT).as_posix()
    for name, src in sorted(dirs.items(), key=lambda kv: -len(kv[1])):  # longest mapping first
        if rel == src or rel.startswith(src + "/"):
            return name + rel[len(src) :].replace("/", ".")
    return rel.replace("/", ".")


def test_every_package_folder_is_listed():
    listed, dirs = _listed()
    found = set()
    for top in ("sglang_trimode", "kernels"):
        for init in (ROOT / top).rglob("__init__.py"):
            if "__pycache__" not in init.parts:
                found.add(_package_name(init.parent, dirs))
    assert "sglang_trimode.kernels.triton" in found and "sglang_trimode.adapter" in found
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert listed - found == set(), "listed in pyproject.toml but not in the tree"
