"""Which token rows of a forward get the drafter adapter (``adapter/lora.py``), for both
engines (``--trimode-drafter-rows``, ``TriModeEngine(..., drafter_rows=...)``).

Only rows whose KV no step keeps may get it (a segment's rows from ``desc.committable`` on): a
causal row never attends to them, so prefill, AR steps, verifies and commit passes are the base
model's and greedy self-speculation still equals greedy AR. Among those rows, a scope picks:

- ``self_spec`` (default): the drafts of self-speculation, a linear draft block and a quadratic
  step's mask groups. Lossless either way (only proposals change), and that is what the
  adapter is trained for (drafts the verifier accepts). Diffusion blocks keep the base model:
  their drafts are the output, and the vendor's diffusion ``generate`` (and its published
  diffusion accuracy) never uses the adapter.
- ``vendor``: the vendor's switching exactly: the whole bidirectional draft forward of linear
  self-speculation only (never prefill, verify, diffusion, AR, nor quadratic steps, which its
  released code runs without the adapter).
- ``all``: every row past ``committable`` (diffusion blocks too: diffusion's output becomes the
  adapter's drafts), this project's behaviour before the scopes.

:func:`padded_gate` builds the reference engine's ``[b, q]`` gate one segment at a time (the
obviously correct twin); :func:`packed_gate` the SGLang worker's ``[T]`` gate of packed
segments from per-request bounds (compared in ``tests/test_vendor_drafter.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sglang_trimode.modes import Segment

SCOPES = ("self_spec", "vendor", "all")
DEFAULT_SCOPE = "self_spec"
_SELF_SPEC = ("self_spec_linear", "self_spec_quadratic")


def check_scope(scope: str) -> str:
    """``scope`` when it is one of :data:`SCOPES`, else a ValueError naming the choices."""
    if scope not in SCOPES:
        raise ValueError(f"drafter rows {scope!r}: expected one of {', '.join(SCOPES)}")
    return scope


def drafting_span(seg: Segment, scope: str) -> tuple[int, int]:
    """``[start, end)``: the rows of ``seg`` the adapter applies to under ``scope`` (empty when
    ``start == end``)."""
    d = seg.desc
    if scope == "all":
        wanted = True
    elif scope == "self_spec":
        wanted = seg.mode in _SELF_SPEC
    else:  # vendor: the linear draft forward, all of whose rows draft (committable 0)
        wanted = seg.mode == "self_spec_linear" and d.committable == 0
    return (d.committable, d.length) if wanted else (d.committable, d.committable)


def padded_gate(segs: Sequence[Segment], scope: str, width: int) -> torch.Tensor:
    """``[len(segs), width]`` bool: row ``j``'s drafting span set, one segment at a time."""
    gate = torch.zeros(len(segs), width, dtype=torch.bool)
    for j, seg in enumerate(segs):
        start, end = drafting_span(seg, scope)
        gate[j, start:end] = True
    return gate


def packed_gate(
    segs: Sequence[Segment | None], scope: str, owner: torch.Tensor, offset: torch.Tensor
) -> torch.Tensor:
    """``[T]`` bool over packed segments (None: a request riding along, no tokens): token ``t``
    of request ``owner[t]`` at ``offset[t]`` in its segment is set when inside the span."""
    bounds = [(0, 0) if s is None else drafting_span(s, scope) for s in segs]
    start, end = torch.tensor(bounds, dtype=torch.int64).reshape(-1, 2).unbind(1)
    return (offset >= start[owner]) & (offset < end[owner])
