"""The reference engine's grammars: ``json_schema`` / ``regex`` / ``ebnf`` compiled with xgrammar
over the checkpoint's tokenizer, as SGLang's default grammar backend compiles them
(``XGrammarGrammarBackend``: ``TokenizerInfo.from_huggingface`` with the model's EOS ids as stop
tokens, JSON with any whitespace). xgrammar is optional:
asking for a grammar without it is a clear error.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from sglang_trimode.rows.grammar import GrammarState

GRAMMAR_FIELDS = ("json_schema", "regex", "ebnf")


def grammar_field(json_schema: Any, regex: str | None, ebnf: str | None) -> tuple[str, str] | None:
    """The one grammar field given as ``(name, text)``, or None; a ValueError naming the fields
    when more than one is given or one is not text (a schema may be a dict)."""
    given = {
        k: v
        for k, v in zip(GRAMMAR_FIELDS, (json_schema, regex, ebnf), strict=True)
        if v is not None
    }
    if len(given) > 1:
        raise ValueError(f"{', '.join(given)}: give at most one grammar field per request")
    if not given:
        return None
    name, value = next(iter(given.items()))
    if name == "json_schema" and isinstance(value, dict):
        value = json.dumps(value)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string (a JSON schema may be a dict)")
    return name, value


def matcher_factory(
    tokenizer, vocab_size: int, stop_ids: Sequence[int], name: str, text: str
) -> Callable[[], object]:
    """A function returning a fresh xgrammar matcher of grammar ``name`` (``json_schema``,
    ``regex``, ``ebnf``) ``text`` over ``tokenizer``; a ValueError naming the field when the
    grammar does not compile, an ImportError with the fix when xgrammar is not installed."""
    try:
        import xgrammar as xgr
    except ImportError as e:
        raise ImportError(
            f"{name}: grammar-constrained decoding needs xgrammar (pip install xgrammar; "
            "requirements/sglang-cpu.txt pins the version SGLang ships with)"
        ) from e
    info = xgr.TokenizerInfo.from_huggingface(
        tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_ids)
    )
    compiler = xgr.GrammarCompiler(info)
    try:
        if name == "json_schema":
            compiled = compiler.compile_json_schema(text, any_whitespace=True)
        elif name == "regex":
            compiled = compiler.compile_regex(text)
        else:
            compiled = compiler.compile_grammar(text)
    except RuntimeError as e:
        raise ValueError(f"{name} does not compile: {e}") from None
    return lambda: xgr.GrammarMatcher(compiled)  # rollback is unlimited in xgrammar 0.2


def grammar_states(new_matcher: Callable[[], object] | None, n: int, vocab_size: int) -> list:
    """One fresh ``GrammarState`` per request (None each without a grammar)."""
    if new_matcher is None:
        return [None] * n
    return [GrammarState(new_matcher(), vocab_size) for _ in range(n)]
