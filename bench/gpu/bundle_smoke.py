"""Prove a GPU bundle complete on this machine: serve every mode from it with torch 2.11 only.

    python bench/gpu/bundle_smoke.py --bundle DIR [--venv DIR] [--out DIR]

DIR is a `--python 3.11` bundle (bench/gpu_bundle.sh --python 3.11). A fresh virtualenv gets
torch 2.11.0 (the GPU machine's version, with its own dependencies, from the package index) and
then nothing but the bundle (`pip install --no-index --no-deps --target OUT/site`: its wheels
and the image stand-ins) and this package from the working tree. From it, a TRIMODE server starts
on the CPU with SGLang's Python radix tree (the compiled one misreads torch 2.11's tensors) and
answers one greedy request per mode, twice (the second hits the prefix cache); self-speculation
must equal `ar`. Exit 0 when all of that held; else one line saying what failed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import step_profile as sp  # noqa: E402  (the bench's server launcher and request helpers)

TORCH = "torch==2.11.0"
#: Environment every server started from a bundle needs with torch 2.11 (see bundle.py).
BUNDLE_ENV = {"SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND": "python"}
MODES = ("ar", "self_spec_linear", "self_spec_quadratic", "diffusion", "auto")
LOSSLESS = ("self_spec_linear", "self_spec_quadratic")


class SmokeError(RuntimeError):
    """A failed smoke step; the message is the one line the user sees."""


def run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        err = [ln for ln in proc.stderr.splitlines() if "is ignored: it is neither" not in ln]
        raise SmokeError(f"{what} failed: {' | '.join(err[-3:])}")


def make_env(venv: Path, bundle: Path, site: Path) -> tuple[Path, Path]:
    """A virtualenv holding only torch 2.11 (kept between runs) and a fresh folder `site` with the
    bundle and this package (`pip install --target`, as on the GPU machine, so a package left out
    of the bundle is missing here too); returns (python, site)."""
    wheels = sorted((bundle / "wheels").glob("*.whl")) + sorted((bundle / "image").glob("*.whl"))
    if not wheels:
        raise SmokeError(f"no wheels in {bundle}: build it with bench/gpu_bundle.sh --python 3.11")
    py = venv / "bin" / "python"
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    if not (venv / ".torch-2.11").exists():
        run([sys.executable, "-m", "venv", "--clear", str(venv)], "creating the virtualenv")
        print(f"[bundle_smoke] installing {TORCH} into {venv} (about a minute)", flush=True)
        run([*pip, TORCH], f"pip install {TORCH}")
        (venv / ".torch-2.11").touch()
    if site.exists():
        shutil.rmtree(site)
    print(f"[bundle_smoke] installing {len(wheels)} bundle wheels into {site}", flush=True)
    target = [*pip, "--no-index", "--no-deps", "--no-compile", "--target", str(site)]
    run([*target, *map(str, wheels)], "bundle install")
    os.environ["PYTHONPATH"] = str(site)  # the bundle's setuptools builds this package
    run([*target, "--no-build-isolation", str(ROOT)], "package install")
    return py, site


def serve_every_mode(py: Path, site: Path, out: Path) -> dict[str, str]:
    """One TRIMODE CPU server from the bundle's python; greedy text per mode (asked twice)."""
    env = dict(os.environ, **BUNDLE_ENV, SGLANG_USE_CPU_ENGINE="1")
    stand_in = ROOT / "sglang_trimode" / "srt" / "cpu_platform"
    env["PYTHONPATH"] = os.pathsep.join((str(stand_in), str(site)))
    model = ROOT / "sglang_trimode" / "assets" / "default_model"
    args = ["--model-path", str(model), "--random-seed", "0", "--max-total-tokens", "4096"]
    args += [*sp.CPU_ARGS, "--speculative-algorithm", "TRIMODE", "--trimode-block-size", "8"]
    texts = {}
    t0 = time.perf_counter()
    with sp.server(args, env, out / "server_bundle.log", python=str(py)) as base:
        print(f"[bundle_smoke] server up in {time.perf_counter() - t0:.0f} s", flush=True)
        for mode in MODES:
            first, again = (sp.load(base, mode, sp.prompts(1), 24, 300)["texts"][0] for _ in "12")
            if first != again:
                raise SmokeError(f"{mode}: a repeated greedy request (prefix cache) differed")
            texts[mode] = first
            print(f"[bundle_smoke] {mode}: {first[:40]!r}", flush=True)
    for mode in LOSSLESS:
        if texts[mode] != texts["ar"]:
            raise SmokeError(f"greedy {mode} differs from ar: {texts[mode]!r} vs {texts['ar']!r}")
    return texts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, required=True, help="a --python 3.11 bundle folder")
    ap.add_argument("--venv", type=Path, default=ROOT / ".gpu-smoke-venv", help="kept between runs")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "bundle_smoke", help="server log")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        py, site = make_env(args.venv.resolve(), args.bundle.resolve(), args.out.resolve() / "site")
        serve_every_mode(py, site, args.out)
    except (SmokeError, RuntimeError) as err:
        print(f"[bundle_smoke] error: {err}", file=sys.stderr)
        return 1
    print("[bundle_smoke] ok: every mode served from the bundle with torch 2.11", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
