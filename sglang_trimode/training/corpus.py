"""A corpus every machine has: the running Python's standard library sources.

Files are split into train and held-out by a hash of their path relative to the stdlib root, so
the split is fixed for a given Python version and never depends on file order. Test suites and
vendored packages are left out (they are large and unlike the rest).
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<mask>")  # ids 0, 1, 2, 3
PAD_ID, BOS_ID, EOS_ID, MASK_ID = range(4)
EXCLUDED_DIRS = frozenset(
    {"test", "tests", "idle_test", "lib2to3", "site-packages", "ensurepip", "turtledemo"}
)
HELDOUT_EVERY = 16  # about 1 file in 16 is held out


STDLIB_ENV = "SGLANG_TRIMODE_STDLIB"


def stdlib_root() -> Path:
    """The running Python's stdlib, or a copy named by $SGLANG_TRIMODE_STDLIB.

    The copy lets a machine with another Python version (e.g. a GPU box) train on the same
    files, so the split and the held-out text stay those of the Python the model card names."""
    override = os.environ.get(STDLIB_ENV)
    if override:
        root = Path(override)
        if not root.is_dir():
            raise FileNotFoundError(f"${STDLIB_ENV}={override} is not a folder")
        return root
    return Path(sysconfig.get_paths()["stdlib"])


def is_heldout(rel: str) -> bool:
    return hashlib.sha1(rel.encode()).digest()[0] % HELDOUT_EVERY == 0


def stdlib_files(split: str, limit: int | None = None) -> list[Path]:
    """Sorted ``.py`` files of the standard library in ``split`` ("train" or "heldout").

    ``limit`` keeps the first files only (small smoke runs)."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    root = stdlib_root()
    out = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).as_posix()
        if EXCLUDED_DIRS.intersection(rel.split("/")):
            continue
        if is_heldout(rel) == (split == "heldout"):
            out.append(p)
    return out[:limit]


def read_texts(files: list[Path]) -> Iterator[str]:
    for p in files:
        try:
            yield p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue


def train_tokenizer(vocab_size: int, out_dir: Path, limit: int | None = None):
    """Byte-level BPE on the train split; saved so that ``AutoTokenizer`` loads it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(read_texts(stdlib_files("train", limit)), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        mask_token="<mask>",
    )
    for i, name in enumerate(SPECIAL_TOKENS):
        assert fast.convert_tokens_to_ids(name) == i, f"special token {name} is not id {i}"
    fast.save_pretrained(str(out_dir))
    return fast


def token_stream(tokenizer, split: str, limit: int | None = None) -> list[int]:
    """All files of a split as one stream: ``<bos> file <eos> <bos> file <eos> ...``."""
    ids: list[int] = []
    for text in read_texts(stdlib_files(split, limit)):
        ids.append(BOS_ID)
        ids.extend(tokenizer.encode(text, add_special_tokens=False))
        ids.append(EOS_ID)
    return ids


def heldout_prompts(n: int, lines: int = 12) -> list[str]:
    """``lines`` lines from the first ``def``/``class`` of ``n`` held-out files.

    The prompt ends at the end of a line, without the newline: byte-level BPE merges a newline
    with the next line's indentation, so a prompt ending in a bare newline would be tokenised
    unlike the training text."""
    prompts = []
    for text in read_texts(stdlib_files("heldout")):
        src = text.splitlines()
        starts = [i for i, s in enumerate(src) if s.startswith(("def ", "class "))]
        if not starts:
            continue
        prompts.append("\n".join(src[starts[0] : starts[0] + lines]).rstrip())
        if len(prompts) == n:
            break
    return prompts
