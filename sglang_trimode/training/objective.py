"""The joint AR + block-diffusion objective on a dual (clean + noisy) stream.

One forward sees ``[clean x_0..x_{T-1} | noisy x~_0..x~_{T-1}]`` at positions ``[0..T-1 | 0..T-1]``:

* the clean stream is token-causal and gives the AR loss (logits at ``i`` predict ``x_{i+1}``);
* the noisy stream is cut into blocks of ``B``; in block ``j`` each token is replaced by the mask
  token with probability ``t_j ~ U(eps, 1)`` (one ratio per block). Noisy block ``j`` attends
  bidirectionally within itself and to the clean tokens of blocks ``< j`` — exactly what a
  diffusion draft sees at inference (its block plus the cached causal prefix). Logits at a masked
  position predict the token at that position (no shift).

loss = w_diff * L_diff + w_ar * L_ar, where L_diff = sum over masked positions of CE / t_j,
divided by the number of noisy tokens (the BD3-LM / LLaDA ELBO estimator, BD3-LM eq. 8).
Masking the first token of a block too trains the TiDAR pre-draft case, whose mask group starts
with a mask at the unknown bonus position.

Three optional levers (off by default; with all off the loss is computed exactly as above):

* ``early_weight = G`` weights the diffusion terms by the token's position ``j`` inside its block
  (``j = i mod B``): ``w_j = G**(-j) / mean_k(G**(-k))``, ``k = 0..B-1``, so the weights of a full
  block average 1 and, for ``G > 1``, early positions count more. Greedy self-speculation accepts
  a prefix of the draft, so a wrong early token wastes every later one.
* ``distill = W`` adds ``W * KL(p_AR || p_diff)`` averaged over the masked noisy positions (each
  with its ``w_j``): self-distillation of the drafter toward the verifier, as in speculative
  decoding's draft distillation (DistillSpec, Zhou et al., ICLR 2024; Medusa-2's
  self-distillation, Cai et al., 2024). Greedy acceptance needs the draft to match the AR argmax,
  not the data. ``p_AR`` is the clean stream's detached distribution for the *same* token: the
  noisy position ``i`` predicts ``x_i`` and the clean logits that predict ``x_i`` sit at ``i - 1``
  (position 0 has no AR prediction in the crop and is left out). The teacher comes from the same
  forward (so it sees the same dropout, if any); the KL is not divided by ``t``.
  ``distill_target="argmax"`` replaces the KL by the cross-entropy to the AR argmax (the
  hard-label form: the token greedy verification accepts).
* ``draft_share = S`` noises a share ``S`` of the blocks like an inference draft instead of with
  ``t ~ U`` (:func:`noise_blocks`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def dual_stream_mask(seq_len: int, block_size: int) -> torch.Tensor:
    """Bool ``[2T, 2T]`` (True = may attend): clean causal; noisy sees its block + clean past."""
    t = seq_len
    idx = torch.arange(t)
    blk = idx // block_size
    causal = idx[None, :] <= idx[:, None]
    same_block = blk[None, :] == blk[:, None]
    earlier_block = blk[None, :] < blk[:, None]
    top = torch.cat([causal, torch.zeros(t, t, dtype=torch.bool)], 1)
    bottom = torch.cat([earlier_block, same_block], 1)
    return torch.cat([top, bottom], 0)


def dual_stream_positions(seq_len: int) -> torch.Tensor:
    """Positions ``[2T]``: both streams share ``0..T-1``."""
    return torch.arange(seq_len).repeat(2)


@dataclass(frozen=True)
class Noised:
    tokens: torch.Tensor  # [N, T] with some tokens replaced by the mask token
    masked: torch.Tensor  # [N, T] bool
    ratio: torch.Tensor  # [N, T] the block's masking ratio t_j at each token


def draft_pattern(n: int, t: int, block: int, gen: torch.Generator) -> torch.Tensor:
    """``[n, t]`` bool: in each block the first ``c ~ U{0, 1}`` tokens known, the rest masked —
    what a draft sees at inference (linear: the seed known; quadratic: a mask at the bonus
    position too)."""
    known = torch.randint(0, 2, (n, -(-t // block)), generator=gen).repeat_interleave(block, 1)
    return (torch.arange(t) % block)[None] >= known[:, :t]


def noise_blocks(
    x: torch.Tensor,
    block_size: int,
    mask_id: int,
    generator: torch.Generator,
    eps: float = 1e-3,
    draft_share: float = 0.0,
) -> Noised:
    """Mask each token of block ``j`` with probability ``t_j ~ U(eps, 1)``.

    ``draft_share = S > 0``: each block instead takes the inference draft pattern
    (:func:`draft_pattern`) with probability ``S`` and ratio 1 (its masked tokens weigh 1).
    Under ``t ~ U`` that pattern is rare (a fully masked block of 8: probability 1/9; seed
    known, rest masked: 1/72) though every self-speculation draft uses it.
    Drawn after the default draws, so ``S = 0`` is today's noise bit for bit."""
    n, t = x.shape
    n_blocks = -(-t // block_size)
    ratio = eps + (1 - eps) * torch.rand(n, n_blocks, generator=generator)
    ratio = ratio.repeat_interleave(block_size, dim=1)[:, :t]
    masked = torch.rand(n, t, generator=generator) < ratio  # CPU draws: same on every device
    if draft_share:
        like = torch.rand(n, n_blocks, generator=generator) < draft_share
        like = like.repeat_interleave(block_size, dim=1)[:, :t]
        masked = torch.where(like, draft_pattern(n, t, block_size, generator), masked)
        ratio = ratio.masked_fill(like, 1.0)
    ratio, masked = ratio.to(x.device), masked.to(x.device)
    return Noised(x.masked_fill(masked, mask_id), masked, ratio)


def position_weights(seq_len: int, block_size: int, early_weight: float) -> torch.Tensor:
    """``[T]`` weights ``G**(-j) / mean_k(G**(-k))`` with ``j = i mod B`` (mean 1 over a block)."""
    if early_weight <= 0:
        raise ValueError(f"early_weight must be > 0, got {early_weight}")
    per_block = torch.tensor(float(early_weight), dtype=torch.float64) ** -torch.arange(block_size)
    per_block = per_block / per_block.mean()
    return per_block[torch.arange(seq_len) % block_size].float()


def ar_to_diffusion_kl(logits: torch.Tensor, seq_len: int) -> torch.Tensor:
    """``[N, T]`` ``KL(p_AR || p_diff)`` per noisy position of a dual-stream forward.

    ``logits [N, 2T, V]``: clean stream first. Entry ``i`` compares the diffusion head at noisy
    position ``i`` (predicting ``x_i``) with the detached clean logits at ``i - 1`` (which predict
    ``x_i`` too); entry 0 has no AR counterpart and is 0."""
    t = seq_len
    teacher = F.log_softmax(logits[:, : t - 1].detach(), -1)  # predicts x_1..x_{T-1}
    student = F.log_softmax(logits[:, t + 1 :], -1)  # noisy 1..T-1 predicts x_1..x_{T-1}
    kl = (teacher.exp() * (teacher - student)).sum(-1)
    return F.pad(kl, (1, 0))


def ar_argmax_to_diffusion_ce(logits: torch.Tensor, seq_len: int) -> torch.Tensor:
    """``[N, T]`` cross-entropy of the diffusion head at noisy position ``i`` against the AR
    head's argmax for ``x_i`` (clean position ``i - 1``): the hard-label form of
    :func:`ar_to_diffusion_kl` (greedy verification accepts a draft token only if it *is* the AR
    argmax, so the drafter is trained on that token alone). Entry 0 is 0."""
    t = seq_len
    target = logits[:, : t - 1].detach().argmax(-1)  # the AR argmax for x_1..x_{T-1}
    student = logits[:, t + 1 :]
    ce = F.cross_entropy(
        student.reshape(-1, student.shape[-1]), target.reshape(-1), reduction="none"
    )
    return F.pad(ce.view(target.shape), (1, 0))


DISTILL_TARGETS = {"kl": ar_to_diffusion_kl, "argmax": ar_argmax_to_diffusion_ce}


@dataclass(frozen=True)
class LossParts:
    total: torch.Tensor
    ar: torch.Tensor
    diffusion: torch.Tensor
    ar_accuracy: torch.Tensor
    distill: torch.Tensor | None = None  # mean distillation term on masked positions, if on


def joint_loss(
    model: torch.nn.Module,
    x: torch.Tensor,
    block_size: int,
    mask_id: int,
    generator: torch.Generator,
    w_diff: float = 0.3,
    w_ar: float = 1.0,
    attn_mask: torch.Tensor | None = None,
    distill: float = 0.0,
    early_weight: float = 1.0,
    draft_share: float = 0.0,
    distill_target: str = "kl",
) -> LossParts:
    """Joint objective on a batch of token sequences ``x [N, T]`` (levers: module docstring)."""
    if distill_target not in DISTILL_TARGETS:
        raise ValueError(
            f"distill_target must be one of {sorted(DISTILL_TARGETS)}, got {distill_target!r}"
        )
    n, t = x.shape
    noised = noise_blocks(x, block_size, mask_id, generator, draft_share=draft_share)
    ids = torch.cat([x, noised.tokens], 1)  # [N, 2T]
    pos = dual_stream_positions(t).to(x.device).expand(n, -1)
    if attn_mask is None:
        dtype = next(model.parameters()).dtype
        attn_mask = model.additive_mask(dual_stream_mask(t, block_size), dtype).to(x.device)
    logits = model(ids, pos, attn_mask)  # [N, 2T, V] float32
    ar_logits = logits[:, : t - 1]
    ar = F.cross_entropy(ar_logits.reshape(-1, ar_logits.shape[-1]), x[:, 1:].reshape(-1))
    ar_acc = (ar_logits.argmax(-1) == x[:, 1:]).float().mean()
    noisy_logits = logits[:, t:]
    ce = F.cross_entropy(
        noisy_logits.reshape(-1, noisy_logits.shape[-1]), x.reshape(-1), reduction="none"
    ).view(n, t)
    if early_weight == 1.0 and not distill:  # today's recipe, bit for bit
        diff = (ce * noised.masked / noised.ratio).sum() / (n * t)
        return LossParts(w_diff * diff + w_ar * ar, ar.detach(), diff.detach(), ar_acc.detach())
    w_pos = position_weights(t, block_size, early_weight).to(x.device)
    diff = (ce * noised.masked / noised.ratio * w_pos).sum() / (n * t)
    total = w_diff * diff + w_ar * ar
    kl_mean = None
    if distill:
        masked = noised.masked.clone()
        masked[:, 0] = False  # no AR prediction for the first token of the crop
        kl = DISTILL_TARGETS[distill_target](logits, t)
        kl_mean = (kl * masked * w_pos).sum() / masked.sum().clamp(min=1)
        total = total + distill * kl_mean
        kl_mean = kl_mean.detach()
    return LossParts(total, ar.detach(), diff.detach(), ar_acc.detach(), kl_mean)
