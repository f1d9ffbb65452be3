"""Build the SGLang bundle that the GPU machine lacks (bench/gpu_bundle.sh is the entry point).

The GPU machine (Python 3.12, torch 2.11, no network) has no sglang and no server stack. The
bundle is a folder of wheels that `pip install --no-index --no-deps --target DIR` installs there:

    OUT/wheels/   sglang 0.5.23 (trimmed of what the server never imports, `TRIM`) + the
                  packages of requirements/sglang-cpu.txt that the image lacks
    OUT/image/    only with --python 3.11: stand-ins for the image's own packages (the image's
                  versions where known), so that a fresh virtualenv holding only torch 2.11 on this
                  machine looks like the GPU image (the CPU smoke, tests/srt/test_gpu_bundle.py)
    OUT/MANIFEST.txt

This package itself is not in the bundle: it travels as the working tree and is installed from it
(`pip install --no-deps --no-build-isolation .`), which saves a second copy of the default model.
The bundle plus the working tree must fit the device tool's 64 MiB carry; over the budget the
build fails and names the largest parts.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SGLANG = "sglang==0.5.23"
#: What the server never imports: multimodal generation, SGLang's own tests, and the Rust
#: extensions of the opt-in Rust HTTP server (SGLANG_RUST_SERVER), gRPC mode, bench clients and
#: multimodal processors (each loaded lazily by its feature). The radix tree's extension stays.
TRIM = (
    "sglang/multimodal_gen/",
    "sglang/test/",
    "sglang/srt/rust_extensions/_server.",
    "sglang/srt/rust_extensions/_bench.",
    "sglang/srt/rust_extensions/_grpc.",
    "sglang/srt/rust_extensions/_multimodal.",
)
#: The GPU image provides these (torch 2.11 and its pairing); never carried.
NEVER_CARRY = {"torch", "torchvision", "torchaudio", "triton"}
#: Stand-ins (3.11 smoke only) for the image's build tools.
BUILD_TOOLS = {"setuptools": "setuptools==84.2.1", "wheel": "wheel==0.45.1"}
PLATFORMS = (
    "manylinux_2_39_x86_64",
    "manylinux_2_35_x86_64",
    "manylinux_2_34_x86_64",
    "manylinux_2_31_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
    "linux_x86_64",
)


class BundleError(RuntimeError):
    """A bundle that cannot be built; the message is the one line the user sees."""


def norm(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> dict[str, str]:
    """`name==version` lines (comments and `-r` includes skipped) -> {normalised name: line}."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        name = re.split(r"[=<>!~\[ ;]", line, maxsplit=1)[0]
        pins[norm(name)] = line
    return pins


def read_image(path: Path) -> dict[str, str | None]:
    """The image's package list -> {normalised name: version or None when unknown}."""
    image: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            image[norm(name)] = version or None
    return image


def plan(pins: dict[str, str], image: dict[str, str | None]) -> tuple[list[str], list[str]]:
    """(what the image lacks, stand-ins for what it has): requirement lines for pip download.

    A stand-in takes the image's version where the list knows it, else the project's pin.
    """
    carry = [line for name, line in pins.items() if name not in image and name not in NEVER_CARRY]
    stand_ins = []
    for name, line in pins.items():
        if name in image and name not in NEVER_CARRY:
            version = image[name]
            stand_ins.append(f"{name}=={version}" if version else line)
    # the image pairs torch 2.11 with torchvision 0.26.0 (sglang imports torchvision) and has the
    # build tools that install this package from the working tree
    stand_ins.append(f"torchvision=={image.get('torchvision') or '0.26.0'}")
    stand_ins += [BUILD_TOOLS[name] for name in BUILD_TOOLS if name in image]
    return sorted(carry), sorted(stand_ins)


def download(reqs: list[str], dest: Path, python: str) -> None:
    """Binary wheels for CPython `python` on x86-64 Linux, no dependencies resolved."""
    if not reqs:
        return
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check"]
    cmd += ["--no-deps", "--only-binary=:all:", "--python-version", python]
    cmd += ["--implementation", "cp", "-d", str(dest)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    proc = subprocess.run(cmd + reqs, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if "ERROR" in ln] or proc.stderr.splitlines()
        raise BundleError(f"pip download failed for Python {python}: {' '.join(lines[-2:])}")


def download_stand_ins(reqs: list[str], pins: dict[str, str], dest: Path, python: str) -> None:
    """`download`, where an image version without a wheel for `python` falls back to our pin
    (numpy 2.5 has no CPython 3.11 wheels, say); each fallback is printed."""
    reqs = list(reqs)
    while True:
        try:
            return download(reqs, dest, python)
        except BundleError as err:
            missing = re.search(r"satisfies the requirement (\S+)", str(err))
            name = norm(re.split(r"[=<>]", missing.group(1))[0]) if missing else None
            line = next((r for r in reqs if norm(r.split("==")[0]) == name), None)
            if line is None or line == pins.get(name, line):
                raise
            print(f"[gpu_bundle]   no {line} for Python {python}: stand-in {pins[name]}")
            reqs[reqs.index(line)] = pins[name]


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def trim_wheel(src: Path, dst: Path, prefixes: tuple[str, ...]) -> int:
    """Copy wheel `src` to `dst` without the members under `prefixes`; RECORD rewritten to match.

    Returns the number of members dropped.
    """
    dropped = 0
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        record_name = next(n for n in zin.namelist() if n.endswith(".dist-info/RECORD"))
        kept = []
        for info in zin.infolist():
            if info.filename.startswith(prefixes):
                dropped += 1
                continue
            if info.filename == record_name:
                continue
            data = zin.read(info)
            zout.writestr(info, data)
            kept.append((info.filename, _record_hash(data), len(data)))
        kept.append((record_name, "", ""))
        record = io.StringIO()
        csv.writer(record, lineterminator="\n").writerows(kept)
        zout.writestr(record_name, record.getvalue())
    return dropped


def tree_bytes(root: Path) -> int:
    """Bytes of what the device tool sends: tracked + untracked-not-ignored files."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout
    files = [root / f for f in out.decode().split("\0") if f]
    return sum(f.stat().st_size for f in files if f.is_file())


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def build(out: Path, python: str, budget_mib: float, image_file: Path) -> int:
    """Build the bundle into `out`; returns 0, raises BundleError with the reason."""
    pins = read_pins(ROOT / "requirements" / "sglang-cpu.txt")
    carry, stand_ins = plan(pins, read_image(image_file))
    if out.exists():
        shutil.rmtree(out)
    wheels = out / "wheels"
    print(f"[gpu_bundle] Python {python}: {len(carry)} packages the GPU image lacks + {SGLANG}")
    with tempfile.TemporaryDirectory() as tmp:
        download([SGLANG], Path(tmp), python)
        (src,) = Path(tmp).glob("sglang-*.whl")
        wheels.mkdir(parents=True)
        dropped = trim_wheel(src, wheels / src.name, TRIM)
        print(f"[gpu_bundle] sglang wheel {mib(src.stat().st_size)} -> ", end="")
        print(f"{mib((wheels / src.name).stat().st_size)} ({dropped} files trimmed)")
    download(carry, wheels, python)
    if python == "3.11":
        print(f"[gpu_bundle] + {len(stand_ins)} stand-ins for the image's packages (image/)")
        download_stand_ins(stand_ins, pins, out / "image", python)
    sizes = sorted(((f.stat().st_size, f.name) for f in wheels.glob("*.whl")), reverse=True)
    bundle = sum(s for s, _ in sizes)
    tree = tree_bytes(ROOT)
    lines = [f"python {python}", SGLANG, *(f"trimmed {t}" for t in TRIM)]
    lines += [f"{s}\t{n}" for s, n in sizes]
    (out / "MANIFEST.txt").write_text("\n".join(lines) + "\n")
    total = bundle + tree
    print(
        f"[gpu_bundle] bundle {mib(bundle)} ({len(sizes)} wheels) + working tree {mib(tree)}",
        end="",
    )
    print(f" = {mib(total)} (budget {budget_mib:g} MiB) -> {out}")
    if total > budget_mib * 2**20:
        largest = ", ".join(f"{n} {mib(s)}" for s, n in sizes[:5])
        raise BundleError(
            f"bundle + working tree {mib(total)} exceed {budget_mib:g} MiB; largest: {largest}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--python", default="3.12", choices=("3.12", "3.11"), help="target CPython")
    ap.add_argument(
        "--out", type=Path, default=ROOT / ".gpu", help="bundle folder (ignored by git)"
    )
    ap.add_argument("--budget-mib", type=float, default=60.0, help="bundle + working tree limit")
    ap.add_argument(
        "--image-packages",
        type=Path,
        default=Path(__file__).with_name("image-packages.txt"),
        help="the GPU image's package list (name[==version] per line)",
    )
    args = ap.parse_args(argv)
    try:
        return build(args.out.resolve(), args.python, args.budget_mib, args.image_packages)
    except BundleError as err:
        print(f"[gpu_bundle] error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
