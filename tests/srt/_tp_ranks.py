"""One rank of the two-process gloo tests in `test_tp_pieces.py` (spawned, so importable).

`run_rank(rank, world, init_file, out_dir)` joins a gloo group of `world` processes, runs every
case (`DRAFTER_CASES`, then the sync case) and saves what each computed to
`out_dir/rank{rank}.pt` for the parent to compare (one spawn: each process imports sglang once).
The row-parallel `o_proj` here mirrors SGLang's `RowParallelLinear` (weight columns of this rank's
input slice, partial products all-reduced by it or by the layer; `tp_group`,
`input_size_per_partition`, `reduce_results`) and `Group` its `GroupCoordinator`
(`rank_in_group`, `world_size`, `all_reduce`, `cpu_group`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

LAYERS, IN, OUT, RANK, ROWS = 2, 8, 6, 3, 5


class Group:
    """The `GroupCoordinator` surface the worker's TP code reads, over the WORLD gloo group."""

    def __init__(self) -> None:
        self.rank_in_group, self.world_size = dist.get_rank(), dist.get_world_size()
        self.cpu_group = dist.group.WORLD
        self.reduces = 0  # all-reduce calls made through it

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        self.reduces += 1
        dist.all_reduce(t, group=self.cpu_group)
        return t


class RowParallel(nn.Module):
    """`sum_k x_k W_k^T` from this rank's columns of the whole `weight`: reduced over `group`
    here (`reduce_results`) or left partial for the layer to reduce (SGLang's Ministral-3)."""

    def __init__(self, weight: torch.Tensor, group: Group, reduce_results: bool) -> None:
        super().__init__()
        part = weight.shape[1] // group.world_size
        self.tp_group, self.input_size_per_partition, self.input_is_parallel = group, part, True
        self.reduce_results = reduce_results
        cols = slice(group.rank_in_group * part, (group.rank_in_group + 1) * part)
        self.weight = nn.Parameter(weight[:, cols].clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.weight.T
        return self.tp_group.all_reduce(y) if self.reduce_results else y

    def layer(self, x: torch.Tensor) -> torch.Tensor:
        """The sum the decoder layer reads: after its own all-reduce when `o_proj` leaves one."""
        y = self(x)
        return y if self.reduce_results else self.tp_group.all_reduce(y)


def toy_model(o_projs: list[nn.Module]) -> nn.Module:
    """`model.encoder.layers[i].self_attn.o_proj`, the layout `DrafterLoRA.attach` hooks."""
    model, model.encoder = nn.Module(), nn.Module()
    layers = []
    for o in o_projs:
        layer, layer.self_attn = nn.Module(), nn.Module()
        layer.self_attn.o_proj = o
        layers.append(layer)
    model.encoder.layers = nn.ModuleList(layers)
    return model


def whole_inputs() -> dict[str, torch.Tensor]:
    """The same seeded weights, adapter factors, inputs and gate on every rank."""
    gen = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(LAYERS, OUT, IN, generator=gen),
        "a": torch.randn(LAYERS, RANK, IN, generator=gen),
        "b": torch.randn(LAYERS, OUT, RANK, generator=gen),
        "x": torch.randn(ROWS, IN, generator=gen),
        "gate": torch.tensor([True, False, True, True, False]),
    }


def drafter(inp: dict[str, torch.Tensor]):
    from sglang_trimode.adapter.lora import DrafterConfig, DrafterLoRA

    lora = DrafterLoRA(DrafterConfig(RANK, 2.0 * RANK), LAYERS, IN, OUT)
    with torch.no_grad():
        lora.lora_A.copy_(inp["a"])
        lora.lora_B.copy_(inp["b"])
    return lora


def _drafter_case(group: Group, reduce_results: bool, mutate: bool) -> dict[str, object]:
    """The sharded drafter on `RowParallel` o_projs; `mutate`: sum the partial products the
    wrong way (not at all where o_proj reduces itself, twice where the layer does)."""
    from sglang_trimode.srt.tp import shard_drafter

    inp = whole_inputs()
    o_projs = [RowParallel(inp["w"][i], group, reduce_results) for i in range(LAYERS)]
    lora = shard_drafter(drafter(inp), o_projs[0])
    if mutate:
        lora._reduce = None if reduce_results else group.all_reduce
    lora.attach(toy_model(o_projs))
    part = o_projs[0].input_size_per_partition
    x = inp["x"][:, group.rank_in_group * part : (group.rank_in_group + 1) * part]
    with torch.no_grad():
        before = group.reduces
        with lora.rows(None):  # no drafting row: the base model
            base = torch.stack([o.layer(x) for o in o_projs])
        plain = group.reduces - before
        with lora.rows(inp["gate"]):
            drafted = torch.stack([o.layer(x) for o in o_projs])
    reduces = group.reduces - before - plain  # in the drafting forward
    return {"base": base, "drafted": drafted, "a_cols": lora.lora_A.shape[2], "plain": plain,
            "reduces": reduces}  # fmt: skip


def _sync_case(group: Group, rank: int) -> dict[str, object]:
    from sglang_trimode.srt import tp

    tp.get_tp_group = lambda: group  # the worker's TP group, as SGLang's parallel state gives it
    out: dict[str, object] = {"seconds": tp.agreed_seconds(1.0 + rank)}
    out["seed"] = tp.request_seed("r")
    tp.check_step_agrees([[5, 6], [7]], [10, 20])  # same on both ranks: passes
    try:
        tp.check_step_agrees([[5, 6 + rank], [7]], [10, 20])
        out["error"] = None
    except RuntimeError as e:
        out["error"] = str(e)
    return out


#: (o_proj reduces itself, mutated) of each drafter case
DRAFTER_CASES = {
    "own": (True, False),
    "layer": (False, False),
    "own_unsummed": (True, True),
    "layer_summed_twice": (False, True),
}


def run_rank(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = {k: _drafter_case(Group(), *v) for k, v in DRAFTER_CASES.items()}
        result["sync"] = _sync_case(Group(), rank)
        torch.save(result, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
