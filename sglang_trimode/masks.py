"""Attention masks and positions for every step kind, as pure functions.

A step appends a *segment* of ``n`` tokens to a request whose KV cache holds ``prefix_len``
committed tokens. Every segment token sees the whole cached prefix; within the segment the
structure is one of two families, each described by a few integers (:class:`MaskDescriptor`)
that the Triton kernels read instead of a dense mask:

* ``BLOCK`` (block size ``B``): bidirectional inside consecutive blocks of ``B`` segment tokens,
  causal across blocks. ``B = 1`` is the causal mask (prefill, decode, commit, linear verify);
  ``B >= n`` is fully bidirectional (a diffusion draft over one block, BD3-LM eq. 3).
* ``QUADRATIC`` (TiDAR-style, arXiv 2511.08923): ``k + 1`` causal tokens ``[seed, d_1..d_k]``
  followed by ``k + 1`` groups of ``L`` masks. Group ``i`` sits at offsets ``i+1 .. i+L`` (the
  positions of the next block if ``d_1..d_i`` are accepted), sees causal tokens ``0..i`` and
  itself bidirectionally, so one forward verifies the drafts and pre-drafts the next block for
  every acceptance length. With ``V > 1`` *variants* each acceptance length gets ``V`` groups:
  variant 0 all masks, variant ``v`` with a candidate for the not-yet-known bonus token in its
  first slot (``modes.QuadraticSpecPolicy``, bonus candidates). Only the ``G`` shortest
  acceptance lengths (``guessed``; default all ``k + 1``) get variants, the others one group, so
  group ``g`` serves acceptance length ``max(g // V, g - G (V - 1))``.

Offsets are relative to ``prefix_len``: the absolute position of segment token ``t`` is
``prefix_len + offsets[t]``. The dense forms are the obviously-correct references.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch


class MaskKind(enum.IntEnum):
    BLOCK = 0
    QUADRATIC = 1


@dataclass(frozen=True)
class MaskDescriptor:
    """Structural mask of one request's segment.

    ``kind``: BLOCK or QUADRATIC. ``length``: segment tokens ``n``. ``block``: block size ``B``
    (BLOCK) or mask-group size ``L`` (QUADRATIC). ``num_causal``: causal tokens ``k + 1``
    (QUADRATIC only; 0 for BLOCK). ``variants``: mask groups ``V`` per acceptance length
    (QUADRATIC; 1 for BLOCK). ``guessed``: how many acceptance lengths, shortest first, get the
    ``V`` groups (QUADRATIC: ``1..num_causal``, 0 stands for all and is stored as ``num_causal``;
    0 for BLOCK).
    """

    kind: MaskKind
    length: int
    block: int
    num_causal: int = 0
    variants: int = 1
    guessed: int = 0

    def __post_init__(self) -> None:
        if self.length < 1:
            raise ValueError(f"MaskDescriptor.length must be >= 1, got {self.length}")
        if self.block < 1:
            raise ValueError(f"MaskDescriptor.block must be >= 1, got {self.block}")
        if self.variants < 1 or (self.kind != MaskKind.QUADRATIC and self.variants != 1):
            raise ValueError(
                f"MaskDescriptor.variants must be >= 1 (QUADRATIC) or 1 (BLOCK), got "
                f"{self.variants} for {self.kind.name}"
            )
        if self.kind != MaskKind.QUADRATIC:
            if self.guessed != 0:
                raise ValueError(f"MaskDescriptor.guessed must be 0 for BLOCK, got {self.guessed}")
            return
        if self.num_causal < 1:
            raise ValueError("MaskDescriptor.num_causal must be >= 1 for QUADRATIC")
        if self.guessed == 0:
            object.__setattr__(self, "guessed", self.num_causal)
        if not 1 <= self.guessed <= self.num_causal:
            raise ValueError(
                f"MaskDescriptor.guessed must be 0 (all) or 1..num_causal={self.num_causal}, "
                f"got {self.guessed}"
            )
        want = self.num_causal + self.num_groups * self.block
        if self.length != want:
            raise ValueError(
                "QUADRATIC length must be num_causal + (num_causal + guessed * (variants - 1)) "
                f"* block = {want}, got {self.length}"
            )

    @property
    def num_groups(self) -> int:
        """QUADRATIC mask groups: ``V`` for each of the ``guessed`` shortest acceptance lengths,
        one for each other (0 for BLOCK)."""
        if self.kind != MaskKind.QUADRATIC:
            return 0
        return self.num_causal + self.guessed * (self.variants - 1)

    @property
    def is_causal(self) -> bool:
        return self.kind == MaskKind.BLOCK and self.block == 1

    @property
    def committable(self) -> int:
        """Leading segment tokens whose KV a step may keep: a causal segment's all (AR step,
        commit, linear verify), a quadratic step's causal tokens, none of a bidirectional
        draft (its KV is not the causal KV later tokens must see)."""
        if self.kind == MaskKind.QUADRATIC:
            return self.num_causal
        return self.length if self.is_causal else 0

    def variants_of(self, i: int) -> int:
        """Mask groups of acceptance length ``i`` (QUADRATIC)."""
        return self.variants if i < self.guessed else 1

    def group_index(self, i: int, variant: int = 0) -> int:
        """Position among the mask groups of acceptance length ``i``'s ``variant``."""
        if not 0 <= i < self.num_causal:
            raise IndexError(f"acceptance length {i} of a step with {self.num_causal - 1} drafts")
        if not 0 <= variant < self.variants_of(i):
            raise IndexError(
                f"variant {variant} of acceptance length {i}, which has {self.variants_of(i)}"
            )
        if i < self.guessed:
            return i * self.variants + variant
        return self.guessed * self.variants + (i - self.guessed)

    def acceptance_of(self, g: int) -> int:
        """The acceptance length mask group ``g`` serves: ``max(g // V, g - G (V - 1))``."""
        return max(g // self.variants, g - self.guessed * (self.variants - 1))

    def group(self, g: int) -> slice:
        """Segment indices of mask group ``g`` (groups counted in segment order)."""
        start = self.num_causal + g * self.block
        return slice(start, start + self.block)

    def group_slice(self, i: int, variant: int = 0) -> slice:
        """Segment indices of the quadratic mask group of acceptance length ``i``, ``variant``."""
        return self.group(self.group_index(i, variant))


# ---- step kinds -------------------------------------------------------------------------------


_DECODE = MaskDescriptor(MaskKind.BLOCK, 1, 1)  # frozen: one instance serves every AR step


def prefill(n: int) -> MaskDescriptor:
    """Causal prefill of ``n`` prompt tokens."""
    return MaskDescriptor(MaskKind.BLOCK, n, 1)


def decode() -> MaskDescriptor:
    """AR decode: one query over the cache."""
    return _DECODE


def diffusion_draft(block_size: int, n: int | None = None) -> MaskDescriptor:
    """Bidirectional denoising of ``[seed, MASK x (B-1)]`` against the cached causal prefix.

    ``n`` (default ``block_size``) may be smaller at the end of generation; the segment is then
    one truncated block, still bidirectional.
    """
    n = block_size if n is None else n
    return MaskDescriptor(MaskKind.BLOCK, n, max(block_size, n))


def commit(n: int) -> MaskDescriptor:
    """Causal pass over a finished block; writes its KV (bidirectional KV differs from causal)."""
    return MaskDescriptor(MaskKind.BLOCK, n, 1)


def linear_verify(n: int) -> MaskDescriptor:
    """Causal verify of ``[seed, d_1..d_{n-1}]`` in linear self-speculation."""
    return MaskDescriptor(MaskKind.BLOCK, n, 1)


def quadratic(
    num_drafts: int, group_size: int, variants: int = 1, guessed: int = 0
) -> MaskDescriptor:
    """One TiDAR-style step: verify ``num_drafts`` drafts and pre-draft a group of
    ``group_size`` tokens for each of the ``num_drafts + 1`` acceptance lengths, ``variants``
    groups for the ``guessed`` shortest (0 or more than there are: all of them)."""
    k1 = num_drafts + 1
    g = k1 if guessed <= 0 else min(guessed, k1)
    n = k1 + (k1 + g * (variants - 1)) * group_size
    return MaskDescriptor(MaskKind.QUADRATIC, n, group_size, k1, variants, g)


# ---- positions and dense masks ----------------------------------------------------------------


def offsets(desc: MaskDescriptor) -> torch.Tensor:
    """Position offsets of the segment tokens relative to the prefix length, int64 ``[n]``."""
    if desc.kind == MaskKind.BLOCK:
        return torch.arange(desc.length, dtype=torch.long)
    causal = torch.arange(desc.num_causal, dtype=torch.long)
    groups = [
        torch.arange(i + 1, i + 1 + desc.block)
        for i in range(desc.num_causal)
        for _ in range(desc.variants_of(i))
    ]
    return torch.cat([causal, *groups])


def segment_mask(desc: MaskDescriptor) -> torch.Tensor:
    """Bool ``[n, n]``: ``out[q, k]`` is True when segment token ``q`` may attend to token ``k``."""
    n = desc.length
    idx = torch.arange(n)
    if desc.kind == MaskKind.BLOCK:
        qb = idx[:, None] // desc.block
        kb = idx[None, :] // desc.block
        return kb <= qb
    k1, g = desc.num_causal, desc.block
    # group id per token: -1 for causal tokens, g for mask group g
    group = torch.where(idx < k1, torch.full_like(idx, -1), (idx - k1) // g)
    v, shift = desc.variants, desc.guessed * (desc.variants - 1)
    accept = torch.maximum(group // v, group - shift)  # acceptance_of, per token
    is_causal = group < 0
    q_causal, k_causal = is_causal[:, None], is_causal[None, :]
    causal_part = q_causal & k_causal & (idx[None, :] <= idx[:, None])
    sees_drafts = ~q_causal & k_causal & (idx[None, :] <= accept[:, None])
    same_group = ~q_causal & ~k_causal & (group[:, None] == group[None, :])
    return causal_part | sees_drafts | same_group


def dense_mask(desc: MaskDescriptor, prefix_len: int) -> torch.Tensor:
    """Bool ``[n, prefix_len + n]``: the full mask of one request's step (prefix fully visible)."""
    if prefix_len < 0:
        raise ValueError(f"prefix_len must be >= 0, got {prefix_len}")
    prefix = torch.ones(desc.length, prefix_len, dtype=torch.bool)
    return torch.cat([prefix, segment_mask(desc)], dim=1)


def positions(desc: MaskDescriptor, prefix_len: int) -> torch.Tensor:
    """Absolute positions (RoPE and Llama-4 query scaling) of the segment tokens, int64 ``[n]``."""
    return prefix_len + offsets(desc)
