"""Tables and projections of bench/gpu/serve.py (pure functions; tests/test_gpu_serve.py)."""

from __future__ import annotations

import json
from pathlib import Path

SELF_SPEC = ("self_spec_linear", "self_spec_quadratic")


def first_divergence(want: list[list[int]], got: list[list[int]]) -> dict:
    """Per-request comparison -> {"equal": bool, "request", "position"} of the first difference."""
    for i, (w, g) in enumerate(zip(want, got, strict=True)):
        if w != g:
            pos = next((j for j, (x, y) in enumerate(zip(w, g)) if x != y), min(len(w), len(g)))
            return {"equal": False, "request": i, "position": pos}
    return {"equal": True}


def verdict(row: dict) -> str:
    if row["equal"]:
        return "equal to the reference engine"
    return f"DIFFERS: request {row['request']}, first at output position {row['position']}"


def attention_line(log: Path) -> str:
    """The server log's line naming the TRIMODE attention path (impl and wrapped backend)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    hits = [ln for ln in text.splitlines() if "TRIMODE: attention impl" in ln]
    return hits[0].split("] ", 1)[-1].strip() if hits else "(no TRIMODE attention line in the log)"


def projected_tok_s(row: dict, al: float) -> float | None:
    """Self-speculation tokens/s if each cycle emitted `al` tokens per request: c * al / step."""
    if row["mode"] not in SELF_SPEC or not row.get("loop_ms"):
        return None
    return row["c"] * al * 1e3 / row["loop_ms"]


def brief(row: dict) -> str:
    loop, fwd = row.get("loop_ms"), row.get("fwd_ms")
    step = f"{loop:.2f} ms/step, fwd {fwd:.2f} ms x{row.get('forwards')}" if loop else "no steps"
    return f"{row['tok_s']:.1f} tok/s, {step}"


def _fmt(x, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def markdown(result: dict, als: tuple[float, ...]) -> str:
    """The run as Markdown: correctness list, then the speed table with projections."""
    lines = [f"GPU serve run {result['date']}" + (" (CPU smoke)" if result["cpu_smoke"] else "")]
    lines.append("")
    for r in result["correctness"]:
        if "mode" in r:
            padded = " (padded)" if r.get("padded") else ""
            lines.append(f"- correctness `{r['mode']}`{padded}: {verdict(r)}")
        elif "trimode_forwards" in r:
            lines.append(f"- padded run: forwards {r['trimode_forwards']}, buckets {r['buckets']}")
        else:
            lines.append(f"- attention path: {r['attention_path']}")
    plain = {(r["size"], r["c"]): r["tok_s"] for r in result["speed"] if r["server"] == "plain_ar"}
    head = ["size", "server", "mode", "impl", "c", "new tok", "tok/s", "vs AR", "ms/step"]
    head += ["fwd ms", "fwd/step", "host ms", "peak GiB"]
    head += [f"proj. tok/s AL {al:g}" for al in als] + [f"proj. vs AR AL {al:g}" for al in als]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["speed"]:
        ar = plain.get((r["size"], r["c"]))
        proj = [projected_tok_s(r, al) for al in als]
        server = r["server"] + (" (CUDA graphs)" if r.get("cuda_graphs") else "")
        cells = [r["size"], server, r["mode"], r["impl"], r["c"], r["new_tokens"]]
        cells += [_fmt(r["tok_s"]), _fmt(r["tok_s"] / ar if ar else None, ".2f")]
        cells += [_fmt(r.get("loop_ms"), ".2f"), _fmt(r.get("fwd_ms"), ".2f")]
        cells += [_fmt(r.get("forwards"), ".0f"), _fmt(r.get("host_ms"), ".2f")]
        cells += [_fmt(r.get("peak_gib"), ".1f")] + [_fmt(p) for p in proj]
        cells += [_fmt(p / ar if p and ar else None, ".2f") for p in proj]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines.append("")
    lines.append(
        "proj.: self-speculation tokens/s at acceptance length AL from the measured ms per"
    )
    lines.append("step (random weights accept no drafts): c * AL / step; a projection, not a run.")
    for s in result["skipped"]:
        lines.append(f"- skipped {s}")
    return "\n".join(lines) + "\n"


def write(result: dict, out: Path, als: tuple[float, ...]) -> None:
    for r in result["speed"]:
        r["projected_tok_s"] = {str(al): projected_tok_s(r, al) for al in als}
    (out / "gpu_serve.json").write_text(json.dumps(result, indent=1))
    (out / "gpu_serve.md").write_text(markdown(result, als))
