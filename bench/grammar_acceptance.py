"""What masking the drafting rows buys under a grammar: acceptance length (AL) and tokens per
forward (TPF) of greedy self-speculation with and without grammar masks on its draft rows.

    python bench/grammar_acceptance.py [--block-size 8] [--max-new-tokens 48] [--out FILE.json]

The verify rows are masked either way (that is what makes the output AR's under the grammar);
only the drafts change, so the tokens are the same with and without (checked). Linear
self-speculation's draft rows are masked along the chain (`rows.grammar`); a quadratic step's
mask groups are masked when `rows.grammar.masks_drafting_rows` says so. Runs the reference
engine with the worker's row summaries (CPU or GPU), on the default model and its tokenizer.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sglang_trimode import default_model_path
from sglang_trimode.models import load_tokenizer
from sglang_trimode.reference.engine import TriModeEngine
from sglang_trimode.rows import grammar as rows_grammar

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "ok": {"type": "boolean"}},
    "required": ["name", "ok"],
}
GRAMMARS = {
    "json_schema": json.dumps(SCHEMA),
    "regex": r"(yes|no), [a-z]+ [0-9]{2}",
    "ebnf": 'root ::= "The answer is " ("yes" | "no") ", " [a-z]+ "."',
}
TEXTS = ["def main():\n", "import os\nimport sys\n", "The weather today is", "# Copyright"]
MODES = ("self_spec_linear", "self_spec_quadratic")


def measure(engine, prompts, mode: str, name: str, block: int, new: int, drafts: bool) -> dict:
    """AL and TPF over all prompts (pooled) of `mode` under grammar `name`."""
    rows_grammar.MASK_DRAFTS = drafts
    try:
        outs = engine.generate(
            prompts, mode=mode, block_size=block, max_new_tokens=new, row_summary=True,
            **{name: GRAMMARS[name]},
        )  # fmt: skip
    finally:
        rows_grammar.MASK_DRAFTS = True
    accepted = [a for o in outs for a in o.stats.accept_lengths]
    tokens = sum(len(o.token_ids) for o in outs)
    forwards = sum(o.stats.forwards for o in outs)
    return {
        "al": sum(accepted) / len(accepted),
        "tpf": tokens / forwards,
        "tokens": [o.token_ids for o in outs],
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--block-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    path = default_model_path()
    engine = TriModeEngine.from_pretrained(path)
    tok = load_tokenizer(path)
    prompts = [tok.encode(t, add_special_tokens=False) for t in TEXTS]
    rows = []
    print(f"{'mode':22} {'grammar':12} {'AL off':>7} {'AL on':>7} {'TPF off':>8} {'TPF on':>7}")
    for mode in MODES:
        for name in GRAMMARS:
            off, on = (
                measure(engine, prompts, mode, name, args.block_size, args.max_new_tokens, d)
                for d in (False, True)
            )
            if off["tokens"] != on["tokens"]:
                raise SystemExit(f"{mode} {name}: draft masking changed the output")
            rows.append({"mode": mode, "grammar": name, "al_off": off["al"], "al_on": on["al"],
                         "tpf_off": off["tpf"], "tpf_on": on["tpf"]})  # fmt: skip
            r = rows[-1]
            print(
                f"{mode:22} {name:12} {r['al_off']:7.2f} {r['al_on']:7.2f} "
                f"{r['tpf_off']:8.2f} {r['tpf_on']:7.2f}"
            )
    if args.out is not None:
        args.out.write_text(json.dumps({"block_size": args.block_size, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
