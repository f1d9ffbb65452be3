"""The TRIMODE worker's tensor-parallel pieces (`sglang_trimode/srt/tp.py`) in two gloo processes.

- The sharded drafter (`tp.shard_drafter`, `DrafterLoRA.shard`) on a row-parallel `o_proj` shaped
  like SGLang's, reduced by the layer (SGLang's Ministral-3) or by itself: on both ranks the
  layer's output equals the whole adapter on the whole `o_proj` in one process (the obviously
  correct twin) within fp32 rounding; rows without the gate are the base model; the drafter adds
  a collective only where o_proj reduces itself, and only in drafting forwards; partial products
  summed the wrong way (the mutations) are wrong.
- What keeps the ranks' workers in step: `agreed_seconds` (the slowest rank's time on both),
  `request_seed` (the same in both processes), `check_step_agrees` (passes on equal steps, names
  the rank on different ones).

The real TP 2 server with every mode and the drafter: `test_server_tp.py`.
"""

from __future__ import annotations

import pytest
from _deps import require

require("sglang", "sglang is not installed (bash scripts/setup_sglang.sh installs it for CPU)")

import torch  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from _tp_ranks import IN, LAYERS, drafter, run_rank, whole_inputs  # noqa: E402
from torch import nn  # noqa: E402

from sglang_trimode.srt import tp  # noqa: E402

WORLD = 2
CLOSE = dict(atol=1e-5, rtol=1e-5)  # fp32: the sum of two partial products vs one matmul


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Each rank's results of every case in `_tp_ranks.CASES` (one spawn of two processes)."""
    out = tmp_path_factory.mktemp("tp_ranks")
    mp.spawn(run_rank, args=(WORLD, str(out / "init"), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{k}.pt") for k in range(WORLD)]


def _whole() -> tuple[torch.Tensor, torch.Tensor]:
    """The whole adapter on whole `o_proj`s in one process: (base, drafted), each `[layers,
    rows, out]`."""
    from _tp_ranks import toy_model

    inp = whole_inputs()
    o_projs = [nn.Linear(IN, inp["w"].shape[1], bias=False) for _ in range(LAYERS)]
    with torch.no_grad():
        for o, w in zip(o_projs, inp["w"], strict=True):
            o.weight.copy_(w)
    lora = drafter(inp).attach(toy_model(o_projs))
    with torch.no_grad():
        base = torch.stack([o(inp["x"]) for o in o_projs])
        with lora.rows(inp["gate"]):
            drafted = torch.stack([o(inp["x"]) for o in o_projs])
    return base, drafted


@pytest.mark.parametrize("case", ["own", "layer"])
def test_sharded_drafter_equals_the_whole_adapter(ranks, case):
    """`layer`: o_proj leaves its partial output to the layer's all-reduce (SGLang's Ministral-3),
    which sums the LoRA too: no collective of the drafter's; `own`: o_proj reduces itself, one
    all-reduce of `A_k x_k` per layer in a drafting forward, none without drafting rows."""
    base, want = _whole()
    gate = whole_inputs()["gate"]
    assert not torch.allclose(want[:, gate], base[:, gate], **CLOSE)  # the adapter matters
    torch.testing.assert_close(want[:, ~gate], base[:, ~gate], atol=0, rtol=0)
    for r in (rank[case] for rank in ranks):
        assert r["a_cols"] == IN // WORLD  # each rank keeps its half of A's columns
        assert r["plain"] == LAYERS  # the model's own all-reduces only
        assert r["reduces"] == LAYERS * (2 if case == "own" else 1)
        torch.testing.assert_close(r["base"], base, **CLOSE)
        torch.testing.assert_close(r["drafted"], want, **CLOSE)


@pytest.mark.parametrize("case", ["own_unsummed", "layer_summed_twice"])
def test_sharded_drafter_summed_the_wrong_way_is_wrong(ranks, case):
    """The mutation checks of the test above: partial products not summed where o_proj reduces
    itself, all-reduced again where the layer sums them already."""
    _, want = _whole()
    for r in (rank[case] for rank in ranks):
        assert not torch.allclose(r["drafted"], want, **CLOSE)


def test_ranks_agree_on_time_seed_and_steps(ranks):
    sync = [rank["sync"] for rank in ranks]
    assert [r["seconds"] for r in sync] == [2.0, 2.0]  # the slowest rank's
    assert sync[0]["seed"] == sync[1]["seed"] == tp.request_seed("r")
    for r in sync:
        assert "tensor-parallel ranks [1] emitted or kept other tokens" in r["error"], r


def test_shard_drafter_refuses_an_uneven_split_and_keeps_tp1():
    inp = whole_inputs()

    class Uneven:
        tp_group = type("G", (), {"world_size": 3, "rank_in_group": 0})()
        input_size_per_partition, input_is_parallel = 2, True

    with pytest.raises(ValueError, match="--trimode-drafter: o_proj's 8 inputs are not split"):
        tp.shard_drafter(drafter(inp), Uneven())
    whole = drafter(inp)
    assert tp.shard_drafter(whole, nn.Linear(IN, 2)) is whole and whole._reduce is None
