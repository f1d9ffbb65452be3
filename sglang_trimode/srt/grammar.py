"""The TRIMODE worker's side of SGLang's grammars (`json_schema`, `regex`, `ebnf`,
`structural_tag`; OpenAI `response_format`).

Who advances what (SGLang 0.5.23, a spec worker without grammar overlap, as TRIMODE is):

- the scheduler compiles each request's grammar (`req.grammar`, an `XGrammarGrammar` with the
  default `--grammar-backend xgrammar`) before the request runs; the prefill's first token comes
  from the target's own sampler, which applies the grammar's vocabulary mask;
- after every batch the scheduler itself feeds the grammar the tokens the batch committed
  (`advance_grammar_fsm`: the prefill token; for a decode step the worker's accepted run, cut
  after the token that ends the grammar), then finishes a request whose grammar ended;
- so at the start of each decode step `req.grammar` stands after `req.output_ids`. The worker's
  `GrammarState` wraps its xgrammar matcher: the policies' `emit` advances it over each token
  the step emits (a step runs several cycles), `rows.grammar` accepts / fills / rolls back on it
  to mask every row, and `settle` rolls the step's tokens back at the end of the step, so the
  scheduler's own advance sees the state it expects and no token is accepted twice.
"""

from __future__ import annotations

from collections.abc import Iterable

from sglang_trimode.rows.grammar import GrammarState


class GrammarBackendError(ValueError):
    """The request's grammar object is not one the worker can drive."""


def request_grammar(req, vocab_size: int) -> GrammarState | None:
    """`req`'s grammar as the policies use it, or None without one; GrammarBackendError when
    its backend is not xgrammar (the worker drives xgrammar matchers)."""
    grammar = getattr(req, "grammar", None)
    if grammar is None:
        return None
    matcher = getattr(grammar, "matcher", None)
    if matcher is None or not hasattr(matcher, "fill_next_token_bitmask"):
        raise GrammarBackendError(
            f"json_schema / regex / ebnf / structural_tag: the {type(grammar).__name__} grammar "
            "is not served with --speculative-algorithm TRIMODE; start the server with "
            "--grammar-backend xgrammar (the default)"
        )
    return GrammarState(matcher, vocab_size)


def settle(states: Iterable) -> None:
    """End of a decode step: roll back what the step's policies accepted on each request's
    grammar (the scheduler advances it over the committed tokens itself)."""
    for r in states:
        if r.grammar is not None:
            r.grammar.settle()
