"""Find every launch command in examples/ (shell scripts and the recipes' markdown) and parse them.

Extraction runs the real shell: each launch script (with each of its modes) and each markdown
```bash block that launches something runs under bash with `python`, `python3` and `sglang` on
PATH replaced by shims. A shim records the argv of `python -m sglang.launch_server ...`,
`sglang serve ...` and `python -m sglang_router.launch_router ...` (plus the environment the
command would see) and exits 0; any other `python` call runs the real interpreter (so
`$(python -c ...)` in a script still works). What is recorded is therefore exactly what the
shell would have run, variables, defaults and `case` branches included.

`python tests/examples/launch_commands.py < commands.json` (run by the tests in a subprocess)
loads SGLang's plugins the way `launch_server` does, parses every server command with SGLang's
own `prepare_server_args` and prints one JSON result per command.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

_SHIM = """#!/bin/sh
case "$1 $2" in
  "-m sglang.launch_server") kind=server; shift 2 ;;
  "-m sglang_router.launch_router") kind=router; shift 2 ;;
  "serve "*) if [ "$SHIM_NAME" = sglang ]; then kind=server; shift 1; fi ;;
esac
if [ -n "${kind:-}" ]; then
  exec "$REAL_PYTHON" -c '
import json, os, sys
env = {k: os.environ[k] for k in ("SGLANG_USE_CPU_ENGINE", "PYTHONPATH", "CUDA_VISIBLE_DEVICES")
       if k in os.environ}
rec = {"kind": sys.argv[1], "argv": sys.argv[2:], "env": env}
with open(os.environ["LAUNCH_RECORD"], "a") as f:
    f.write(json.dumps(rec) + "\\n")
' "$kind" "$@"
fi
[ "$SHIM_NAME" = sglang ] && { echo "shim: unexpected sglang call: $*" >&2; exit 3; }
exec "$REAL_PYTHON" "$@"
"""

#: First words a markdown launch block may use (anything else would run for real).
_ALLOWED_WORDS = {"python", "python3", "sglang", "export", "wait", "for", "done"}
_ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def _shim_dir(tmp: Path) -> Path:
    d = tmp / "shims"
    d.mkdir(exist_ok=True)
    for name in ("python", "python3", "sglang"):
        p = d / name
        p.write_text(_SHIM.replace("$SHIM_NAME", name))
        p.chmod(0o755)
    return d


def _run_recorded(args: list[str], tmp: Path, env_extra: dict[str, str] | None = None) -> list:
    record = tmp / "record.jsonl"
    record.write_text("")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CUDA_VISIBLE_DEVICES")}
    env.update(env_extra or {})
    env["PATH"] = f"{_shim_dir(tmp)}{os.pathsep}{env['PATH']}"
    env["REAL_PYTHON"] = sys.executable
    env["LAUNCH_RECORD"] = str(record)
    res = subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if res.returncode != 0:
        raise AssertionError(f"{' '.join(args)} -> exit {res.returncode}\n{res.stderr[-2000:]}")
    return [json.loads(line) for line in record.read_text().splitlines()]


def logical_lines(block: str) -> list[str]:
    """Shell lines with backslash continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", block)
    return [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.strip()[0] == "#"]


def markdown_blocks(path: Path, lang: str = "bash") -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def launch_blocks(path: Path) -> list[str]:
    """The ```bash blocks of a markdown file that launch a server or router."""
    launch = re.compile(r"sglang\.launch_server|sglang_router|sglang serve")
    return [b for b in markdown_blocks(path) if launch.search(b)]


def check_block_is_launch_only(block: str) -> None:
    for line in logical_lines(block):
        words = shlex.split(line.rstrip("&").strip())
        while words and _ASSIGN.match(words[0]):
            words = words[1:]
        if words and words[0] not in _ALLOWED_WORDS:
            raise AssertionError(f"launch block runs {words[0]!r}, not only launches: {line!r}")


def extract_markdown(path: Path, tmp: Path) -> list[dict]:
    out = []
    for i, block in enumerate(launch_blocks(path)):
        check_block_is_launch_only(block)
        script = tmp / "block.sh"
        script.write_text("set -euo pipefail\n" + block)
        for rec in _run_recorded(["bash", str(script)], tmp):
            rec["source"] = f"{path.relative_to(ROOT)}#block{i}"
            out.append(rec)
    return out


def extract_script(path: Path, args: list[str], tmp: Path, env: dict[str, str]) -> list[dict]:
    recs = _run_recorded(["bash", str(path), *args], tmp, env)
    for rec in recs:
        rec["source"] = f"{path.relative_to(ROOT)} {' '.join(args)} {env}".strip()
    return recs


def parse_main() -> None:
    """stdin: JSON list of argv lists; stdout: `RESULT <json>` with one entry per argv."""
    import contextlib
    import io

    from sglang.srt.plugins import load_plugins

    load_plugins()
    from sglang.srt.server_args import prepare_server_args

    from sglang_trimode.srt import flags, spec

    results = []
    for argv in json.load(sys.stdin):
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                sa = prepare_server_args(argv)
        except SystemExit as e:
            results.append({"ok": False, "error": err.getvalue()[-600:], "code": e.code})
            continue
        is_trimode = (sa.speculative_algorithm or "").upper() == "TRIMODE"
        width = flags.verify_width(spec.settings_from_server_args(sa)) if is_trimode else 1
        fields = (
            "model_path", "tp_size", "pp_size", "dp_size", "nnodes", "node_rank",
            "dist_init_addr", "context_length", "max_running_requests", "mem_fraction_static",
            "host", "port", "device", "speculative_algorithm", "disable_cuda_graph",
        )  # fmt: skip
        got = {f: getattr(sa, f, None) for f in fields}
        got["trimode"] = {k: v for k, v in spec.trimode_values(sa).items() if v is not None}
        got["verify_width"] = width
        results.append({"ok": True, "args": json.loads(json.dumps(got, default=str))})
    print("RESULT " + json.dumps(results))


def parse_commands(argvs: list[list[str]], env: dict[str, str]) -> list[dict]:
    """Parse argvs with SGLang's parser (plugins loaded) in a fresh subprocess."""
    with tempfile.TemporaryDirectory() as cwd:
        res = subprocess.run(
            [sys.executable, str(Path(__file__))], input=json.dumps(argvs), cwd=cwd, env=env,
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    if res.returncode != 0 or not lines:
        rc = res.returncode
        raise AssertionError(f"parser subprocess failed (rc={rc}):\n{res.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


if __name__ == "__main__":
    parse_main()
