"""The GPU bundle (bench/gpu/bundle.py, bench/gpu/bundle_smoke.py): what it carries, how it trims
sglang's wheel, its size budget, its errors, and (slow, network) the CPU smoke: every mode served
from a Python 3.11 bundle in a virtualenv that holds only torch 2.11."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench" / "gpu"))

import bundle  # noqa: E402


def test_plan_carries_what_the_image_lacks_and_never_torch(tmp_path):
    pins = {"pyzmq": "pyzmq==27.3.0", "numpy": "numpy==2.4.6", "torch": "torch==2.14.1"}
    pins |= {"transformers": "transformers==5.19.0", "torchvision": "torchvision==0.29.1"}
    image = {"numpy": "2.5.2", "transformers": None, "torch": "2.11.0", "torchvision": "0.26.0"}
    carry, stand_ins = bundle.plan(pins, image)
    assert carry == ["pyzmq==27.3.0"]
    # stand-ins: the image's version where known, else our pin; torchvision at the image's pair
    assert stand_ins == sorted(["numpy==2.5.2", "transformers==5.19.0", "torchvision==0.26.0"])


def test_shipped_image_list_and_pins_give_a_plan():
    pins = bundle.read_pins(ROOT / "requirements" / "sglang-cpu.txt")
    image = bundle.read_image(ROOT / "bench" / "gpu" / "image-packages.txt")
    assert image["torch"] == "2.11.0" and image["transformers"] == "5.17.0"
    carry, _ = bundle.plan(pins, image)
    names = {bundle.norm(c.split("==")[0]) for c in carry}
    assert {"fastapi", "uvicorn", "pyzmq", "xgrammar", "pydantic"} <= names
    assert not names & {"torch", "torchvision", "triton", "numpy", "transformers", "aiohttp"}


def _wheel(path: Path, files: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr("pkg-1.0.dist-info/RECORD", "stale\n")


def test_trim_wheel_drops_members_and_rewrites_record(tmp_path):
    src, dst = tmp_path / "pkg-1.0-py3-none-any.whl", tmp_path / "out.whl"
    files = {"pkg/a.py": b"a = 1\n", "pkg/big/x.so": b"\0" * 100, "pkg/b,c=1.json": b"{}"}
    _wheel(src, files)
    assert bundle.trim_wheel(src, dst, ("pkg/big/",)) == 1
    with zipfile.ZipFile(dst) as z:
        names = set(z.namelist())
        rows = list(csv.reader(io.StringIO(z.read("pkg-1.0.dist-info/RECORD").decode())))
    assert names == {"pkg/a.py", "pkg/b,c=1.json", "pkg-1.0.dist-info/RECORD"}
    by_name = {r[0]: r for r in rows}  # a name with a comma stays one CSV field
    assert set(by_name) == names
    assert by_name["pkg/a.py"][1:] == [bundle._record_hash(b"a = 1\n"), "6"]


def test_over_budget_fails_naming_the_largest_parts(tmp_path, monkeypatch, capsys):
    def fake_download(reqs, dest, python):
        dest.mkdir(parents=True, exist_ok=True)
        for req in reqs:
            name = req.split("==")[0]
            if name == "sglang":
                _wheel(dest / "sglang-0.5.23-cp312-cp312-any.whl", {"sglang/x.py": b"x"})
            else:
                (dest / f"{name}-1-py3-none-any.whl").write_bytes(b"\0" * 2**20)

    monkeypatch.setattr(bundle, "download", fake_download)
    rc = bundle.main(["--out", str(tmp_path / "b"), "--budget-mib", "1"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "exceed 1 MiB; largest:" in err and "-1-py3-none-any.whl 1.0 MiB" in err


def test_bad_python_is_refused_by_the_wrapper():
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_bundle.sh"), "--python", "3.9"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "invalid choice: '3.9'" in proc.stderr


def test_smoke_without_a_bundle_says_how_to_build_one(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "gpu" / "bundle_smoke.py"),
            "--bundle",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().endswith("build it with bench/gpu_bundle.sh --python 3.11")


@pytest.mark.slow
@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="the smoke bundle is built for 3.11")
def test_bundle_smoke_serves_every_mode_with_torch_2_11(tmp_path):
    """Builds the 3.11 bundle (PyPI), installs it into a virtualenv holding only torch 2.11 and
    serves every mode from it on the CPU (about 6 minutes). Needs the package index."""
    out = tmp_path / "bundle"
    build = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_bundle.sh"), "--python", "3.11", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    smoke = [sys.executable, str(ROOT / "bench" / "gpu" / "bundle_smoke.py"), "--bundle", str(out)]
    smoke += ["--venv", str(tmp_path / "venv"), "--out", str(tmp_path / "out")]
    proc = subprocess.run(smoke, capture_output=True, text=True)
    log = tmp_path / "out" / "server_bundle.log"
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    assert proc.returncode == 0, proc.stdout + proc.stderr + tail
    assert "ok: every mode served from the bundle with torch 2.11" in proc.stdout
