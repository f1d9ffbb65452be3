"""Request validation: every bad input is a ValueError naming the field and the fix."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from sglang_trimode.modes import POLICIES


def validate_request(
    cfg,
    prompts: Sequence[Sequence[int]],
    modes: Sequence[str],
    seeds: Sequence[int],
    max_new_tokens: int,
    block_size: int,
    threshold: float | None,
    diffusion_steps: int | None,
    bonus_candidates: int = 0,
    bonus_lengths: int = 0,
) -> None:
    """Check one ``generate`` call against the model config before any forward runs."""
    if not isinstance(prompts, Sequence) or isinstance(prompts, (str, bytes)) or not prompts:
        raise ValueError("prompts must be a non-empty list of token-id lists")
    if len(modes) != len(prompts):
        raise ValueError(
            f"mode: got {len(modes)} modes for {len(prompts)} prompts; give one or one each"
        )
    if len(seeds) != len(prompts):
        raise ValueError(
            f"seed: got {len(seeds)} seeds for {len(prompts)} prompts; give one or one each"
        )
    for m in modes:
        if m not in POLICIES and m != "auto":
            raise ValueError(f"mode must be one of {sorted(POLICIES)} or 'auto', got {m!r}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
    if threshold is not None and not (0.0 < threshold <= 1.0):
        raise ValueError(
            f"threshold must be in (0, 1] or None (even top-k schedule), got {threshold!r}"
        )
    if diffusion_steps is not None and (
        not isinstance(diffusion_steps, int) or diffusion_steps < 1
    ):
        raise ValueError(f"diffusion_steps must be an int >= 1 or None, got {diffusion_steps!r}")
    check_bonus_candidates(bonus_candidates, cfg.vocab_size, "bonus_candidates")
    check_bonus_lengths(bonus_lengths, bonus_candidates, "bonus_lengths", "bonus_candidates")
    if bonus_candidates and "auto" in modes:
        raise ValueError(
            "bonus_candidates: the auto scheduler's cost model does not count the extra mask "
            "groups; use bonus_candidates with fixed modes (self_spec_quadratic) only"
        )
    limit = cfg.max_position_embeddings
    for i, p in enumerate(prompts):
        if isinstance(p, (str, bytes)) or not isinstance(p, Sequence):
            raise ValueError(f"prompts[{i}] must be a list of token ids (tokenise text first)")
        if len(p) == 0:
            raise ValueError(f"prompts[{i}] is empty; give at least one token (e.g. BOS)")
        bad = [t for t in p if not isinstance(t, int) or not 0 <= t < cfg.vocab_size]
        if bad:
            raise ValueError(
                f"prompts[{i}] holds token ids outside the vocabulary "
                f"[0, {cfg.vocab_size}): {bad[:5]}"
            )
        if cfg.mask_token_id in p:
            raise ValueError(
                f"prompts[{i}] holds the mask token id {cfg.mask_token_id} (config.mask_token_id); "
                "remove it: the mask token is reserved for diffusion drafting"
            )
        # the quadratic step places its mask groups up to block_size positions past the last token
        lookahead = block_size if modes[i] == "self_spec_quadratic" else 0
        if len(p) + max_new_tokens + lookahead > limit:
            raise ValueError(
                f"prompts[{i}]: prompt length {len(p)} + max_new_tokens {max_new_tokens}"
                + (f" + block_size {lookahead} (quadratic look-ahead)" if lookahead else "")
                + f" exceeds max_position_embeddings {limit}; lower max_new_tokens"
            )


def validate_logprobs(
    cfg, logprobs: bool, top_logprobs: int, token_ids_logprob: Sequence[int] | None
) -> tuple[int, ...]:
    """Check ``generate``'s logprob options; returns the ``token_ids_logprob`` ids as a tuple."""
    if top_logprobs < 0 or (top_logprobs and not logprobs):
        raise ValueError(f"top_logprobs must be >= 0 and needs logprobs=True, got {top_logprobs}")
    chosen = tuple(token_ids_logprob or ())
    if chosen and not logprobs:
        raise ValueError("token_ids_logprob needs logprobs=True")
    bad = [i for i in chosen if not (isinstance(i, int) and 0 <= i < cfg.vocab_size)]
    if bad:
        raise ValueError(
            f"token_ids_logprob: ids {bad} are not token ids of this vocabulary "
            f"(0..{cfg.vocab_size - 1})"
        )
    return chosen


#: most bonus candidates per acceptance length (each adds ``(k + 1) x B`` rows to a step)
MAX_BONUS_CANDIDATES = 64


def check_bonus_candidates(count: object, vocab_size: int, name: str) -> None:
    """``count`` bonus candidates per quadratic acceptance length: an int in ``[0, hi]``, ``hi``
    = 64 or fewer for a tiny vocabulary (each is a token other than the draft)."""
    hi = min(MAX_BONUS_CANDIDATES, vocab_size - 2)
    if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= hi:
        raise ValueError(
            f"{name} must be an int in [0, {hi}] (extra mask groups per quadratic acceptance "
            f"length; 0 turns them off), got {count!r}"
        )


def check_bonus_lengths(count: object, candidates: int, name: str, candidates_name: str) -> None:
    """``count``: how many of a quadratic step's acceptance lengths, shortest first, get the bonus
    candidates' groups: an int >= 0 (0: every one), and only with candidates turned on."""
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ValueError(
            f"{name} must be an int >= 0 (the acceptance lengths 0..N-1 that get bonus-candidate "
            f"groups; 0: every one), got {count!r}"
        )
    if count and not candidates:
        raise ValueError(
            f"{name}={count} needs {candidates_name} > 0 (it limits which acceptance lengths get "
            f"the candidates' groups); set {candidates_name} or leave {name} at 0"
        )


def validate_adjust(cfg, logit_bias, min_new_tokens: object, max_new_tokens: int) -> None:
    """Check ``generate``'s ``logit_bias`` (token id -> finite number) and ``min_new_tokens`` (an
    int in ``[0, max_new_tokens]``, SGLang's range)."""
    if logit_bias is not None and not isinstance(logit_bias, Mapping):
        raise ValueError(f"logit_bias must be a dict token id -> bias, got {logit_bias!r}")
    for t, v in (logit_bias or {}).items():
        ok_id = isinstance(t, int) and not isinstance(t, bool) and 0 <= t < cfg.vocab_size
        if not ok_id:
            raise ValueError(
                f"logit_bias: key {t!r} is not a token id of this vocabulary "
                f"(0..{cfg.vocab_size - 1})"
            )
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"logit_bias[{t}] must be a finite number, got {v!r}")
    bad = isinstance(min_new_tokens, bool) or not isinstance(min_new_tokens, int)
    if bad or not 0 <= min_new_tokens <= max_new_tokens:
        raise ValueError(
            f"min_new_tokens must be an int in [0, max_new_tokens={max_new_tokens}], got "
            f"{min_new_tokens!r}"
        )


#: SGLang's ranges of the penalties (``SamplingParams.verify``): name -> (low, high, low included)
PENALTY_RANGES = {
    "frequency_penalty": (-2.0, 2.0, True),
    "presence_penalty": (-2.0, 2.0, True),
    "repetition_penalty": (0.0, 2.0, False),
}


def per_request_penalty(name: str, value: object, n: int) -> list[float]:
    """``generate``'s penalty ``name``: one number for every prompt or one per prompt, each a
    finite number in SGLang's range -> ``n`` floats."""
    values = list(value) if isinstance(value, (list, tuple)) else [value] * n
    if len(values) != n:
        raise ValueError(f"{name}: {len(values)} values for {n} prompts; give one or one each")
    low, high, closed = PENALTY_RANGES[name]
    for v in values:
        number = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
        if not number or not (low <= v if closed else low < v) or v > high:
            bracket = "[" if closed else "("
            raise ValueError(f"{name} must be a number in {bracket}{low:g}, {high:g}], got {v!r}")
    return [float(v) for v in values]
