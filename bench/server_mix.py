"""Tokens/s of a TRIMODE server under mixed-mode loads (requests of several modes at once).

    python bench/server_mix.py --url http://127.0.0.1:30000 \
        --mix ar:12,self_spec_quadratic:4 --mix diffusion:8,self_spec_linear:8 \
        --max-new-tokens 48 --repeats 2 --out out/server_mix.json

Each `--mix` is one load: `MODE:N,...` requests sent at once (native `/generate`, greedy,
`ignore_eos`, each asking for its mode through `custom_params`), repeated `--repeats` times;
the table gives the best wall time of the repeats, tokens/s, and per mode the mean
`trimode_forwards` and tokens per forward from `meta_info`. The server must run
`--speculative-algorithm TRIMODE` (checked: every response names the mode it ran). Where the
worker's forwards are packed (no padding to the widest segment) a mix of short and long
segments costs the sum of its tokens, not batch x widest; this script measures that.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MODES = ("ar", "diffusion", "self_spec_linear", "self_spec_quadratic", "auto")


def parse_mix(text: str) -> list[tuple[str, int]]:
    """`ar:12,self_spec_quadratic:4` -> [("ar", 12), ("self_spec_quadratic", 4)]."""
    out = []
    for item in text.split(","):
        mode, _, count = item.strip().partition(":")
        if mode not in MODES:
            raise ValueError(f"--mix {text!r}: unknown mode {mode!r}; expected one of {MODES}")
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"--mix {text!r}: {item!r} needs a count >= 1 (MODE:N)")
        out.append((mode, int(count)))
    return out


def _post(url: str, body: dict, timeout: float) -> dict:
    req = urllib.request.Request(
        url + "/generate", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{url}/generate answered {e.code}: {e.read()[:300]!r}") from e


def run_mix(
    url: str, mix: list[tuple[str, int]], max_new: int, timeout: float, sampling: dict | None = None
) -> dict:
    """Send every request of `mix` at once; wall time, tokens and per-mode stats. `sampling`:
    extra sampling params (e.g. temperature, top_p); request i gets `sampling_seed` i."""
    modes = [m for m, n in mix for _ in range(n)]

    def one(i: int) -> dict:
        sp = {"temperature": 0.0, "max_new_tokens": max_new, "ignore_eos": True}
        if sampling:
            sp |= sampling | {"sampling_seed": i}
        sp["custom_params"] = {"trimode_mode": modes[i]}
        text = f"def function_{i}(path, mode):\n    "
        out = _post(url, {"text": text, "sampling_params": sp}, timeout)
        return out, time.perf_counter() - start  # this request's latency

    start = time.perf_counter()
    with ThreadPoolExecutor(len(modes)) as ex:
        outs = list(ex.map(one, range(len(modes))))
    wall = time.perf_counter() - start
    per_mode: dict[str, dict] = {}
    for mode, (out, latency) in zip(modes, outs, strict=True):
        meta = out["meta_info"]
        if meta.get("trimode_mode") != mode:
            raise RuntimeError(
                f"{url} ran mode {meta.get('trimode_mode')!r} for a {mode!r} request: start it "
                "with --speculative-algorithm TRIMODE (every mode is served by default)"
            )
        stats = per_mode.setdefault(
            mode, {"requests": 0, "tokens": 0, "forwards": 0, "latency_s": 0.0}
        )
        stats["requests"] += 1
        stats["latency_s"] += latency / sum(m == mode for m in modes)  # mean over the mode
        stats["tokens"] += meta["completion_tokens"]
        stats["forwards"] += meta["trimode_forwards"]
    tokens = sum(s["tokens"] for s in per_mode.values())
    return {"wall_s": wall, "tokens": tokens, "per_mode": per_mode}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--url", required=True, help="a server started with --speculative-algorithm TRIMODE"
    )
    p.add_argument("--mix", action="append", required=True, help="MODE:N,MODE:N (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--out", default="out/server_mix.json")
    a = p.parse_args(argv)
    try:
        mixes = [(text, parse_mix(text)) for text in a.mix]
    except ValueError as e:
        p.error(str(e))
    if a.repeats < 1 or a.max_new_tokens < 1:
        p.error("--repeats and --max-new-tokens must be >= 1")
    if a.temperature < 0 or not 0 < a.top_p <= 1:
        p.error("--temperature must be >= 0 and --top-p in (0, 1]")
    sampling = {"temperature": a.temperature, "top_p": a.top_p} if a.temperature > 0 else None
    rows = []
    for text, mix in mixes:
        runs = []
        for rep in range(a.repeats):
            runs.append(run_mix(a.url, mix, a.max_new_tokens, a.timeout, sampling))
            print(f"[server_mix] {text} repeat {rep + 1}/{a.repeats}: "
                  f"{runs[-1]['wall_s']:.1f} s", file=sys.stderr, flush=True)  # fmt: skip
        best = min(runs, key=lambda r: r["wall_s"])
        rows.append({"mix": text, "best": best, "walls_s": [r["wall_s"] for r in runs]})
    print(f"{'mix':<40} {'tokens':>7} {'wall s':>7} {'tok/s':>7}  "
          "per mode: forwards/req, TPF, mean latency s")  # fmt: skip
    for row in rows:
        b = row["best"]
        modes = "  ".join(
            f"{m}: {s['forwards'] / s['requests']:.1f}, {s['tokens'] / max(s['forwards'], 1):.2f}, "
            f"{s['latency_s']:.2f}"
            for m, s in b["per_mode"].items()
        )
        tps = b["tokens"] / b["wall_s"]
        print(f"{row['mix']:<40} {b['tokens']:>7} {b['wall_s']:>7.2f} {tps:>7.1f}  {modes}")
    result = {"url": a.url, "max_new_tokens": a.max_new_tokens, "sampling": sampling, "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
