"""Compare two ``bench/tpf.py`` runs on the same prompts: TPF difference with a paired interval.

    python bench/tpf_compare.py BASE/tpf.json NEW/tpf.json [--out DIR]

For each (mode, block) in both files: TPF of each, ``new - base`` and its 95% paired-bootstrap
interval over the prompts (request ``i`` of both runs resampled together, so how easy each prompt
is cancels out; an interval that excludes 0 is a difference the prompts do not explain), and
characters per forward where both runs have it. Prints a table and writes ``DIR/compare.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/tpf_compare.py` without the package installed
    sys.path.insert(0, str(REPO))

from bench.tpf import paired_diff_ci  # noqa: E402

SAME = ("prompts", "prompt_source", "max_new_tokens", "threshold", "temperature")


def load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(
            f"{path}: not a readable tpf.json ({e}); run bench/tpf.py --out DIR"
        ) from None
    if any("per_request" not in r for r in data.get("rows", [])):
        raise SystemExit(f"{path}: rows without 'per_request'; rerun it with this bench/tpf.py")
    return data


def compare(base: dict, new: dict) -> list[dict]:
    """One row per (mode, block_size) present in both runs."""
    differ = [k for k in SAME if base.get(k) != new.get(k)]
    if differ:
        raise SystemExit(
            f"the runs differ in {differ}: {[(base.get(k), new.get(k)) for k in differ]}; "
            "compare runs of bench/tpf.py made with the same prompt options"
        )
    by_key = {(r["mode"], r["block_size"]): r for r in base["rows"]}
    rows = []
    for r in new["rows"]:
        b = by_key.get((r["mode"], r["block_size"]))
        if b is None:
            continue
        diff, lo, hi = paired_diff_ci(b["per_request"], r["per_request"])
        rows.append(
            {
                "mode": r["mode"],
                "block_size": r["block_size"],
                "tpf_base": b["tokens_per_forward"],
                "tpf_new": r["tokens_per_forward"],
                "tpf_diff": diff,
                "tpf_diff_ci95": [lo, hi],
                "chars_per_forward_base": b.get("chars_per_forward"),
                "chars_per_forward_new": r.get("chars_per_forward"),
            }
        )
    if not rows:
        raise SystemExit("no (mode, block size) in common: nothing to compare")
    return rows


def format_rows(rows: list[dict]) -> str:
    head = (
        f"{'mode':<28} {'block':>5} {'base':>6} {'new':>6} {'new-base [95% paired]':>24}  chars/fwd"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lo, hi = r["tpf_diff_ci95"]
        cpf = r["chars_per_forward_base"], r["chars_per_forward_new"]
        chars = f"{cpf[0]:.2f} -> {cpf[1]:.2f}" if None not in cpf else "-"
        lines.append(
            f"{r['mode']:<28} {r['block_size']:>5} {r['tpf_base']:>6.2f} {r['tpf_new']:>6.2f} "
            f"{r['tpf_diff']:>+8.2f} [{lo:+.2f}, {hi:+.2f}]{'':>3}  {chars}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("base", type=Path, help="tpf.json of the reference run")
    ap.add_argument("new", type=Path, help="tpf.json of the run to compare")
    ap.add_argument("--out", type=Path, default=Path("out/tpf_compare"))
    args = ap.parse_args(argv)
    rows = compare(load(args.base), load(args.new))
    print(f"base: {args.base}\nnew:  {args.new}")
    print(format_rows(rows))
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"base": str(args.base), "new": str(args.new), "rows": rows}
    (args.out / "compare.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out / 'compare.json'}")
    return rows


if __name__ == "__main__":
    main()
