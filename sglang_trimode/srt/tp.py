"""Tensor parallelism in the TRIMODE worker: keeping the TP ranks' workers in step, and the
drafter's shard.

Every TP rank's scheduler runs its own `TriModeWorker` over the same batch. Each forward holds
collectives (the row-parallel all-reduces, the vocabulary-parallel LM head's all-gather, also in
the model output's `head` when a quadratic step reads a mask group later, the sharded drafter's
all-reduce), so every rank must run the same forwards, of the same shapes, in the same order.
The logits every rank reads are the same all-gathered tensor, so the mode policies agree as long
as nothing rank-local feeds a decision:

- a sampled request's generator seed without `sampling_seed`: `request_seed`, a CRC-32 of the
  request id (Python's `hash` of a string differs between processes);
- `auto`'s online cost fit: `agreed_seconds`, the slowest rank's forward time on every rank;
- `check_step_agrees`: after each decode step the ranks compare a fingerprint of what they
  emitted and kept; a mismatch stops with an error naming the ranks instead of a collective
  mismatch deep in gloo / NCCL or silently different KV on one rank.

The drafter (`shard_drafter`): `o_proj` is row-parallel, so each rank keeps the columns of LoRA
`A` that match its slice of `o_proj`'s input; its partial `B A_k x_k` rides in `o_proj`'s partial
output and the layer's all-reduce sums it (SGLang's Ministral-3 builds `o_proj` with
`reduce_results=False`: no collective of the drafter's own). Only for an `o_proj` that reduces
itself are the `r`-wide `A_k x_k` all-reduced (`adapter/lora.py`, `DrafterLoRA.shard`).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence

import torch
from sglang.srt.distributed import get_tp_group

from sglang_trimode.adapter.lora import DrafterLoRA

logger = logging.getLogger(__name__)

SEED_MODULUS = 2**31  # torch.Generator seeds: a non-negative 31-bit int, like before


def request_seed(rid: str) -> int:
    """The generator seed of a request without `sampling_seed`: the same on every rank and in
    every run (a CRC-32 of its id)."""
    return zlib.crc32(str(rid).encode()) % SEED_MODULUS


def agreed_seconds(seconds: float) -> float:
    """The slowest TP rank's time of one forward, on every rank (one all-reduce over the TP
    group's CPU side); `seconds` itself at TP 1."""
    group = get_tp_group()
    if group.world_size == 1:
        return seconds
    t = torch.tensor([seconds], dtype=torch.float64)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX, group=group.cpu_group)
    return float(t[0])


def fingerprint(new_tokens: Sequence[Sequence[int]], prefix: Sequence[int]) -> list[int]:
    """`[requests, tokens, CRC-32 of the tokens, CRC-32 of the kept prefixes]` of one step."""
    flat = [t for toks in new_tokens for t in toks]
    crc = zlib.crc32(torch.tensor(flat, dtype=torch.int64).numpy().tobytes())
    kept = zlib.crc32(torch.tensor(list(prefix), dtype=torch.int64).numpy().tobytes())
    return [len(new_tokens), len(flat), crc, kept]


def check_step_agrees(new_tokens: Sequence[Sequence[int]], prefix: Sequence[int]) -> None:
    """Raise when the TP ranks' workers emitted or kept different tokens this decode step (one
    all-gather of four ints over the TP group's CPU side); nothing to check at TP 1."""
    group = get_tp_group()
    if group.world_size == 1:
        return
    mine = torch.tensor(fingerprint(new_tokens, prefix), dtype=torch.int64)
    every = [torch.empty_like(mine) for _ in range(group.world_size)]
    torch.distributed.all_gather(every, mine, group=group.cpu_group)
    differ = [k for k, f in enumerate(every) if not torch.equal(f, every[0])]
    if differ:
        raise RuntimeError(
            f"TRIMODE: tensor-parallel ranks {differ} emitted or kept other tokens than rank 0 "
            f"this decode step ([requests, tokens, crc, kept crc] {[f.tolist() for f in every]}): "
            "their workers decided differently (a rank-local input to a policy); serve with "
            "--tp-size 1 and report it"
        )


def shard_drafter(drafter: DrafterLoRA, o_proj) -> DrafterLoRA:
    """One TP rank's share of the whole `drafter` for SGLang's row-parallel `o_proj` (any
    layer's: all are split alike): `A`'s columns of this rank's input slice; the partial
    products summed with `o_proj`'s partial output downstream, or (an `o_proj` that reduces
    itself) by an all-reduce over its own TP group. Unchanged at TP 1."""
    group = getattr(o_proj, "tp_group", None)
    if group is None or group.world_size == 1:
        return drafter
    part, size, rank = o_proj.input_size_per_partition, group.world_size, group.rank_in_group
    full = drafter.lora_A.shape[2]
    if part * size != full or not getattr(o_proj, "input_is_parallel", True):
        raise ValueError(
            f"--trimode-drafter: o_proj's {full} inputs are not split into {size} slices of "
            f"{part} (--tp-size {size}); pass --trimode-drafter off or another --tp-size"
        )
    if getattr(o_proj, "use_decode_attn_tp", False):
        raise ValueError(
            "--trimode-drafter: o_proj reduces over the decode attention TP group here, which "
            "the sharded drafter does not follow; pass --trimode-drafter off"
        )
    reduce = group.all_reduce if getattr(o_proj, "reduce_results", True) else None
    logger.info(
        "TRIMODE: drafter sharded: A columns [%d, %d) of %d on TP rank %d of %d; partial "
        "products summed %s",
        rank * part, (rank + 1) * part, full, rank, size,
        "by an all-reduce of A_k x_k (o_proj reduces itself)" if reduce else
        "with o_proj's partial outputs by the layer's all-reduce",
    )  # fmt: skip
    return drafter.shard(rank * part, (rank + 1) * part, reduce)
