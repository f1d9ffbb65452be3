"""Log probabilities of the TRIMODE worker's tokens in SGLang's speculative result layout.

The policies (`sglang_trimode.modes`) record, for requests with `return_logprob`, each emitted
token's logprob under the distribution it was drawn from and, with `top_logprobs_num`, its row's
best (`RequestState.logprobs` / `top_logprobs`). `step_output` turns one decode step's new tokens
into the `LogitsProcessorOutput` SGLang's output processing reads for speculative batches:
`next_token_logprobs [bs, width]` (request i's new tokens first), and `bs * width` top-k
entries and chosen-id entries (`token_ids_logprob`; request i, token j at `i * width + j`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sglang_trimode.modes import RequestState


def abort_request(req, message: str) -> None:
    """Finish `req` at the end of this step with HTTP 400 `message` (the others go on)."""
    from http import HTTPStatus

    from sglang.srt.managers.schedule_batch import FINISH_ABORT

    req.to_finish = FINISH_ABORT(message, HTTPStatus.BAD_REQUEST, "BadRequestError")


def top_logprobs_num(req) -> int:
    """How many top logprobs per generated token `req` asks for (0: none or no logprobs)."""
    info = getattr(req, "logprob", None)
    return int(getattr(info, "top_logprobs_num", 0) or 0) if req.return_logprob else 0


def chosen_ids(req) -> tuple[int, ...]:
    """The ids whose log probabilities `req` asks for at each generated token
    (`token_ids_logprob`; empty without `return_logprob`)."""
    info = getattr(req, "logprob", None)
    ids = getattr(info, "token_ids_logprob", None) if req.return_logprob else None
    return tuple(int(i) for i in ids or ())


def step_output(
    batch, states: Sequence[RequestState], new_tokens: Sequence[Sequence[int]], width: int
):
    """This step's logprobs in SGLang's speculative layout: `next_token_logprobs [bs, width]`,
    request i's new tokens' logprobs first, zeros after (SGLang reads as many as it accepts);
    top logprobs and chosen-id logprobs (`token_ids_logprob`): `bs * width` entries each, a
    tensor of the request's values (and its ids), empty where none was asked for."""
    from sglang.srt.layers.logits_processor import LogitsProcessorOutput

    bs = len(batch.reqs)
    logprobs = torch.zeros(bs, width, dtype=torch.float32)
    empty_v, empty_i = torch.zeros(0), torch.zeros(0, dtype=torch.int64)
    top_v, top_i = [empty_v] * (bs * width), [empty_i] * (bs * width)
    # chosen ids always filled: SGLang reads an entry for every request whose
    # `token_ids_logprob` is not None, even an empty list (the worker tracks nothing for it)
    chosen_v, chosen_i = [empty_v] * (bs * width), [[]] * (bs * width)
    for i, (req, r, toks) in enumerate(zip(batch.reqs, states, new_tokens, strict=True)):
        if not toks or not req.return_logprob or r.logprobs is None:
            continue
        logprobs[i, : len(toks)] = torch.tensor(r.logprobs[-len(toks) :])
        if r.top_logprobs is not None:
            for j, (values, ids) in enumerate(r.top_logprobs[-len(toks) :]):
                top_v[i * width + j] = torch.tensor(values)
                top_i[i * width + j] = torch.tensor(ids, dtype=torch.int64)
        if r.chosen_logprobs is not None:
            for j, values in enumerate(r.chosen_logprobs[-len(toks) :]):
                chosen_v[i * width + j] = torch.tensor(values)
                chosen_i[i * width + j] = list(r.chosen_ids)
    tops = any(r.top_logprobs is not None for r in states)
    return LogitsProcessorOutput(
        next_token_logits=None,
        next_token_logprobs=logprobs,
        next_token_top_logprobs_val=top_v if tops else None,
        next_token_top_logprobs_idx=top_i if tops else None,
        next_token_token_ids_logprobs_val=chosen_v,
        next_token_token_ids_logprobs_idx=chosen_i,
    )
