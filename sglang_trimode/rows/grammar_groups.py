"""Grammar masks on a quadratic step's mask groups (its drafts of the next block).

Mask group ``g`` serves acceptance length ``a = desc.acceptance_of(g)``: its rows stand at the
bonus position ``a + 1`` and after, so the tokens before them are the seed, drafts ``1..a`` and
the bonus: the guess in the group's first slot when it holds one, else the masked argmax of
causal row ``a`` (the greedy bonus; for a sampled request the true bonus is in the request's
output by the time its policy reads the group, after verifying, and the walk starts there).
The walk is ``rows.grammar``'s; the rows are drafts only, so this raises acceptance and never
changes output. :func:`group_head` masks the groups a head call returns (the worker reads one
group per step, through the LM head); :func:`groups_slow` is its twin on full rows.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

import torch

from sglang_trimode import masks
from sglang_trimode.rows.adjust import Head, first_index


def group_known(seg, g: int, first: int, causal_best: Callable[[int], int], mask_id: int):
    """Output index -> token before mask group ``g``'s rows (see the module doc), and the
    output position each of its rows decides."""
    desc = seg.desc
    a = desc.acceptance_of(g)
    known = {first + j: int(seg.tokens[j]) for j in range(a + 1)}
    slot = int(seg.tokens[desc.group(g).start])
    known[first + a + 1] = slot if slot != mask_id else causal_best(a)
    return known, [first + a + 1 + r for r in range(desc.block)]


def group_head(head: Head, entries: list[tuple], mask_id: int) -> Head:
    """``head`` with the mask-group rows of each ``(full_start, state, seg, prefix,
    causal_rows)`` entry masked as read (``causal_rows``: the step's masked causal logits).

    A read looks only at the entries whose rows it can hold (segments are contiguous and do not
    overlap, so those are the entries starting between the last start <= the smallest index and
    the largest index): each request reading its own group costs O(log batch), not O(batch)."""
    from sglang_trimode.rows.grammar import _masked, _walk

    entries = sorted(entries, key=lambda e: e[0])
    starts = [e[0] for e in entries]

    def read(idx: torch.Tensor) -> torch.Tensor:
        rows = head(idx)
        if not idx.numel():
            return rows
        local = idx.cpu()
        lo, hi = int(local.min()), int(local.max())
        k = max(bisect.bisect_right(starts, lo) - 1, 0)
        near = entries[k : bisect.bisect_right(starts, hi)]
        cloned = False
        for start, r, seg, prefix, causal in near:
            desc = seg.desc
            own = local - start
            hit = ((own >= desc.num_causal) & (own < desc.length)).nonzero().flatten()
            if not hit.numel():
                continue
            if not cloned:
                rows, cloned = rows.clone(), True
            groups = (own[hit] - desc.num_causal) // desc.block
            first = first_index(r, prefix)
            for g in groups.unique().tolist():
                sel = hit[groups == g]
                known, decided = group_known(
                    seg, g, first, lambda a, c=causal: int(c[a].argmax()), mask_id
                )
                at = (own[sel] - desc.group(g).start).tolist()

                def apply(j: int, allowed: torch.Tensor, sel=sel, rows=rows) -> int:
                    rows[sel[j]] = _masked(rows[sel[j]], allowed)
                    return int(rows[sel[j]].argmax())

                _walk(
                    r.grammar, known, [decided[k] for k in at], len(r.out), r.grammar.allowed, apply
                )
        return rows

    return read


def quadratic_entries(states, segs, prefix, picked, starts_full, starts_eager, out) -> list:
    """The `group_head` entries of the picked quadratic requests."""
    return [
        (starts_full[i], states[i], segs[i], prefix[i],
         out[starts_eager[i] : starts_eager[i] + segs[i].desc.num_causal])
        for i in picked
        if segs[i].desc.kind == masks.MaskKind.QUADRATIC
    ]  # fmt: skip


def groups_slow(rows: torch.Tensor, seg, first: int, mask_id: int, walk_group) -> torch.Tensor:
    """The twin on one quadratic request's full rows ``[n, V]`` (causal rows already masked):
    every group masked, ``walk_group(known, decided, row_indices)`` masking rows in place."""
    desc = seg.desc
    for g in range((desc.length - desc.num_causal) // desc.block):
        known, decided = group_known(seg, g, first, lambda a: int(rows[a].argmax()), mask_id)
        walk_group(known, decided, list(range(desc.group(g).start, desc.group(g).stop)))
    return rows
