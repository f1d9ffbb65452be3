"""Per-request stats in each response's `meta_info`: `trimode_mode`, `trimode_forwards`,
`trimode_accept_lengths`, `trimode_step_modes` (the reference engine's `stats.forwards` /
`stats.accept_lengths` / `stats.step_modes`: the mode that ran each verify / commit step, one
entry per `trimode_accept_lengths` entry; under `auto` it shows the modes actually used, while
`trimode_mode` says "auto").

They ride SGLang's own per-token `customized_info` channel (no installed file is patched):

- scheduler side (`record`, called by the TRIMODE worker after each step): `req.customized_info`
  holds one list under `STEP_KEY`, aligned with `req.output_ids`; the last token of each step
  carries `(mode, forwards so far, accept lengths added by this step, their step modes)`, every
  other token None.
  SGLang's output streamer sends each output chunk's slice of that list to the tokenizer manager,
  which accumulates it per request.
- tokenizer-manager side (`after_update_request_meta_info`, an AFTER hook on
  `TokenizerManager.update_request_meta_info`): folds the accumulated list into the three keys
  and removes the raw `STEP_KEY` from the response.
"""

from __future__ import annotations

from typing import Any

STEP_KEY = "trimode_step"
MODE_KEY = "trimode_mode"
FORWARDS_KEY = "trimode_forwards"
ACCEPT_KEY = "trimode_accept_lengths"
STEP_MODES_KEY = "trimode_step_modes"
_SENT_ATTR = "_trimode_accept_sent"  # on a scheduler Req: accept lengths already recorded
_AGG_ATTR = "_trimode_stats_agg"  # on a tokenizer ReqState: [folded, mode, fwd, lens, modes]


def record(req: Any, mode: str, n_new: int, req_stats: Any = None) -> None:
    """Mark this step on `req` (scheduler process), before SGLang appends its `n_new` tokens;
    `req_stats` is the request's `modes.RequestStats` (None at prefill: no forwards yet)."""
    forwards = req_stats.forwards if req_stats is not None else 0
    accept_lengths = req_stats.accept_lengths if req_stats is not None else []
    step_modes = req_stats.step_modes if req_stats is not None else []
    sent = getattr(req, _SENT_ATTR, 0)
    if sent > len(accept_lengths):  # the worker restarted this request's state (retraction)
        sent = 0
    info = req.customized_info
    if info is None:
        info = req.customized_info = {}
    steps = info.setdefault(STEP_KEY, [])
    n_out = len(req.output_ids)
    del steps[n_out:]
    steps.extend([None] * (n_out - len(steps)))
    if n_new <= 0:
        return
    steps.extend([None] * (n_new - 1))
    lengths = [int(a) for a in accept_lengths[sent:]]
    steps.append((mode, int(forwards), lengths, [str(m) for m in step_modes[sent:]]))
    setattr(req, _SENT_ATTR, len(accept_lengths))


def fold(agg: list, entries: list) -> list:
    """Fold accumulated per-token entries into `agg` = [folded, mode, forwards, lengths,
    step modes]."""
    for entry in entries[agg[0] :]:
        if entry is None:
            continue
        mode, forwards, lengths, modes = entry
        agg[1] = mode
        agg[2] = forwards
        agg[3].extend(lengths)
        agg[4].extend(modes)
    agg[0] = len(entries)
    return agg


def after_update_request_meta_info(result, _manager, meta_info, state, *args, **kwargs):
    """AFTER hook on `TokenizerManager.update_request_meta_info` (tokenizer-manager process)."""
    entries = state.customized_info_accumulated.get(STEP_KEY)
    if entries is None:
        return result
    agg = getattr(state, _AGG_ATTR, None)
    if agg is None:
        agg = [0, None, 0, [], []]
        setattr(state, _AGG_ATTR, agg)
    fold(agg, entries)
    meta_info.pop(STEP_KEY, None)
    state.customized_info_reported_keys.discard(STEP_KEY)
    if agg[1] is not None:
        meta_info[MODE_KEY] = agg[1]
        meta_info[FORWARDS_KEY] = agg[2]
        meta_info[ACCEPT_KEY] = list(agg[3])
        meta_info[STEP_MODES_KEY] = list(agg[4])
    return result
