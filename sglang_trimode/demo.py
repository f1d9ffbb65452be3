"""The main job: every decoding mode side by side on the default model.

    python -m sglang_trimode.demo [--model PATH] [--max-new-tokens 48] [--block-size 8]

Prints each mode's output for the first prompt (text when the model folder has a tokenizer,
token ids otherwise) and a table of forwards, tokens per forward (TPF), acceptance length (AL)
and wall time for the whole batch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sglang_trimode.models import default_model_path, load_tokenizer
from sglang_trimode.reference.engine import SUPPORTED_MODES, TriModeEngine
from sglang_trimode.report import format_table, random_prompts, run_mode


def demo_prompts(engine: TriModeEngine, tokenizer, n: int) -> list[list[int]]:
    """Held-out stdlib snippets when the model has a tokenizer, random token ids otherwise."""
    if tokenizer is not None:
        from sglang_trimode.training.corpus import heldout_prompts

        return [tokenizer.encode(t) for t in heldout_prompts(n)]
    return random_prompts(engine.config, n)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--model", type=Path, default=None, help="checkpoint folder (default: built-in)"
    )
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--block-size", type=int, default=None, help="default: config.block_size")
    ap.add_argument("--threshold", type=float, default=0.9, help="diffusion unmasking threshold")
    ap.add_argument("--prompts", type=int, default=3, help="batch size (ragged prompts)")
    args = ap.parse_args(argv)

    path = args.model or default_model_path()
    engine = TriModeEngine.from_pretrained(path)
    tokenizer = load_tokenizer(Path(path))
    block = args.block_size or engine.config.block_size
    prompts = demo_prompts(engine, tokenizer, args.prompts)
    print(
        f"model: {path}  block_size: {block}  prompts: {len(prompts)}  "
        f"max_new_tokens: {args.max_new_tokens}\n"
    )
    if tokenizer is not None:
        print(f"prompt 1 (held-out stdlib code): ...{tokenizer.decode(prompts[0])[-160:]!r}\n")
    rows = []
    for mode in SUPPORTED_MODES:
        row, outs = run_mode(
            engine,
            prompts,
            mode,
            block,
            max_new_tokens=args.max_new_tokens,
            threshold=args.threshold,
        )
        rows.append(row)
        ids = outs[0].token_ids
        shown = repr(tokenizer.decode(ids)) if tokenizer is not None else str(ids)
        print(f"[{mode}] {shown}")
    print()
    print(format_table(rows))
    print(
        "\nTPF = generated tokens / forwards after the prefill (draft, verify and commit passes"
        " each count one); AL = tokens per verify or commit step."
    )


if __name__ == "__main__":
    main()
