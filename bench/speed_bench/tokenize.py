"""Text <-> ids for the in-process backends: the model folder's tokenizer, or a byte fallback.

The fallback exists so that the bench runs on a random checkpoint without a tokenizer (tests, a
fresh machine before the default model ships): ids are ``offset + byte % (vocab - offset)``, the
special ids below ``offset`` are never produced, and decoding is lossy. Numbers on it measure the
machinery, not a language model.
"""

from __future__ import annotations

from pathlib import Path


class ByteTokenizer:
    def __init__(self, vocab_size: int, offset: int = 4) -> None:
        if vocab_size <= offset + 1:
            raise ValueError(f"vocab_size {vocab_size} too small for a byte tokenizer")
        self.vocab_size = vocab_size
        self.offset = offset

    def encode(self, text: str) -> list[int]:
        span = self.vocab_size - self.offset
        return [self.offset + b % span for b in text.encode("utf-8")]

    def decode(self, ids: list[int]) -> str:
        data = bytes((i - self.offset) % 256 for i in ids if i >= self.offset)
        return data.decode("utf-8", errors="replace")


def load_text_tokenizer(model_path: str | Path, vocab_size: int, allow_bytes: bool = True):
    """The folder's tokenizer, or (with a printed warning) the byte fallback."""
    from sglang_trimode.models import load_tokenizer

    tok = load_tokenizer(model_path)
    if tok is not None:
        return tok
    if not allow_bytes:
        raise ValueError(
            f"{model_path} ships no tokenizer.json; pass --byte-tokenizer to use bytes"
        )
    print(
        f"[speed_bench] {model_path} ships no tokenizer: using the byte fallback "
        "(outputs are not readable text; the numbers measure the machinery only)"
    )
    return ByteTokenizer(vocab_size)


def encode(tokenizer, text: str) -> list[int]:
    """Ids without special tokens added by the tokenizer (prompts are raw text)."""
    try:
        return list(tokenizer.encode(text, add_special_tokens=False))
    except TypeError:
        return list(tokenizer.encode(text))
