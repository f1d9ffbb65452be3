"""`--tp-size 2` through a real `python -m sglang.launch_server` on a CPU (gloo collectives).

One TRIMODE server at TP 2 (block 4, `_srt_server.tp_env`: PyNccl off, a core per rank) serving a
copy of the default model (4 query / 2 KV heads: both split in two) with a seeded random
draft-only adapter written by `peft` (`linear_spec_lora/`, o_proj, r 8): every layer is sharded,
the LM head is vocabulary-parallel (its logits all-gathered, also for the quadratic mask groups
read later through the model output's `head`), and each rank holds half of the drafter's `A`
columns. The reference is the TP 1 reference engine with the same adapter (a TP 1 server equals it:
`test_server_trimode.py`, `test_server_fill_in_off.py`):

- every mode, greedy, ragged batch of 4: the same tokens, the same forwards and acceptance
  lengths (the drafter's drafts are accepted exactly as at TP 1; without it they differ), and the
  same logprobs and top-2 within `CLOSE` (fp32; the TP sums round in another order);
- `auto` (cost fitted online from each forward's time: the slowest rank's on both) and sampled
  requests without a seed in every self-speculation mode and auto in one batch: served, the
  greedy auto request = AR, a sampled linear request's logprobs = the reference model's scores
  of its tokens. Before the ranks agreed on the seed this batch stopped the server (a gloo
  collective mismatch: each rank drew other drafts); the worker's per-step check of the ranks'
  tokens (`srt/tp.py`) would name a disagreement in the log.

Marked slow: a TP 2 server start plus the requests take minutes on two cores.
"""

from __future__ import annotations

import pytest
from _deps import require

require("sglang", "sglang is not installed (bash scripts/setup_sglang.sh installs it for CPU)")
require("peft", "peft writes the adapter (requirements/test.txt)")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from _srt_server import post_ok, prompts, tp_env, trimode_server  # noqa: E402

from sglang_trimode import TriModeEngine  # noqa: E402
from sglang_trimode.srt.flags import REQUEST_MODES  # noqa: E402

sys.path.insert(0, str(Path(__file__).parents[1]))
from vendor_adapter import drafted_default_model  # noqa: E402

pytestmark = [pytest.mark.server, pytest.mark.slow]

TP = 2
BLOCK = 4
MAX_NEW_TOKENS = 24
TOP = 2
DRAFTER_B_STD = 0.1  # as test_server_fill_in_off.py: drafts other tokens, not garbage
CLOSE = dict(atol=1e-4, rtol=1e-4)  # logprobs at TP 2 vs TP 1, fp32
WARM = 0.8  # temperature of the sampled requests


@pytest.fixture(scope="module")
def drafted(tmp_path_factory):
    """The default model with a seeded random PEFT adapter (any shipped one replaced)."""
    return drafted_default_model(tmp_path_factory.mktemp("drafted_tp") / "model", DRAFTER_B_STD)


@pytest.fixture(scope="module")
def server(tmp_path_factory, drafted):
    extra = ("--tp-size", str(TP), "--model-path", str(drafted))
    with trimode_server(tmp_path_factory, "sglang_trimode_tp2", BLOCK, extra, tp_env(TP)) as srv:
        yield srv


@pytest.fixture(scope="module")
def engine(drafted):
    return TriModeEngine.from_pretrained(drafted, device="cpu", dtype=torch.float32)


def _generate(engine, mode: str, **kw):
    return engine.generate(
        prompts(), mode=mode, block_size=BLOCK, max_new_tokens=MAX_NEW_TOKENS, stop_token_ids=[],
        **kw,
    )  # fmt: skip


def _params(mode: str, temperature: float = 0.0) -> dict:
    return {
        "temperature": temperature, "max_new_tokens": MAX_NEW_TOKENS, "ignore_eos": True,
        "custom_params": {"trimode_mode": mode},
    }  # fmt: skip


@pytest.mark.parametrize("mode", REQUEST_MODES)
def test_every_mode_at_tp2_equals_tp1(server, engine, mode):
    want = _generate(engine, mode, logprobs=True, top_logprobs=TOP)
    body = {"input_ids": prompts(), "sampling_params": _params(mode)}
    body |= {"return_logprob": True, "top_logprobs_num": TOP}
    out = post_ok(server["base"] + "/generate", body)
    for o, w in zip(out, want, strict=True):
        meta = o["meta_info"]
        assert o["output_ids"] == list(w.token_ids), mode
        assert meta["trimode_forwards"] == w.stats.forwards, mode
        assert meta["trimode_accept_lengths"] == list(w.stats.accept_lengths), mode
        got = meta["output_token_logprobs"]
        torch.testing.assert_close(
            torch.tensor([lp for lp, _, _ in got]), torch.tensor(w.logprobs), **CLOSE
        )
        tops = meta["output_top_logprobs"]
        assert [[tid for _, tid, _ in t] for t in tops] == [ids for _, ids in w.top_logprobs]
        torch.testing.assert_close(
            torch.tensor([[v for v, _, _ in t] for t in tops]),
            torch.tensor([v for v, _ in w.top_logprobs]),
            **CLOSE,
        )


def test_the_drafter_is_sharded_and_matters(server, engine, drafted):
    """Each rank loaded half of `A`'s 256 columns (4 heads x 64), its partial products summed by
    the decoder layer's all-reduce of o_proj's partial output (SGLang's Ministral-3); the
    reference without the adapter accepts other lengths, so the equal stats above are the sharded
    drafter's."""
    plain = TriModeEngine.from_pretrained(drafted, dtype=torch.float32, drafter=False)
    for mode in ("self_spec_linear", "self_spec_quadratic"):
        with_it = [o.stats.accept_lengths for o in _generate(engine, mode)]
        assert with_it != [o.stats.accept_lengths for o in _generate(plain, mode)], mode
    # a quadratic step here too, so the deferred-head line below is in the log in any test order
    one = post_ok(
        server["base"] + "/generate",
        {"input_ids": prompts()[0], "sampling_params": _params("self_spec_quadratic")},
    )
    assert one["meta_info"]["trimode_accept_lengths"] == list(with_it[0])
    log = server["log"].read_text(errors="replace")
    for rank in range(TP):
        assert f"TP{rank}] TRIMODE: drafter adapter {drafted}/" in log
    for rank, cols in enumerate(("[0, 128)", "[128, 256)")):
        assert (
            f"drafter sharded: A columns {cols} of 256 on TP rank {rank} of {TP}; partial products "
            "summed with o_proj's partial outputs by the layer's all-reduce"
        ) in log
    assert log.count("quadratic steps: logits of the causal rows in the forward") == TP


def test_auto_and_sampled_requests_keep_the_ranks_in_step(server, engine):
    ps = prompts()
    ar = _generate(engine, "ar")
    modes = ["auto", "auto", "self_spec_quadratic", "self_spec_linear"]
    params = [_params("auto")] + [_params(m, WARM) for m in modes[1:]]
    body = {"input_ids": ps, "sampling_params": params}
    body |= {"return_logprob": [False, False, False, True], "top_logprobs_num": 0}
    out = post_ok(server["base"] + "/generate", body)
    assert out[0]["output_ids"] == list(ar[0].token_ids)  # greedy auto = AR
    for o, mode in zip(out, modes, strict=True):
        assert o["meta_info"]["trimode_mode"] == mode
        assert len(o["output_ids"]) == MAX_NEW_TOKENS
    ids = out[3]["output_ids"]
    n = len(ps[3]) + MAX_NEW_TOKENS
    with torch.no_grad():
        logits = engine.model(
            torch.tensor([ps[3] + ids]), torch.arange(n)[None], engine.model.causal_mask(n)
        )[0, len(ps[3]) - 1 : -1]
    want = torch.log_softmax(logits.float() / WARM, -1).gather(-1, torch.tensor(ids)[:, None])
    got = torch.tensor([lp for lp, _, _ in out[3]["meta_info"]["output_token_logprobs"]])
    torch.testing.assert_close(got, want[:, 0], **CLOSE)
    log = server["log"].read_text(errors="replace")
    assert "emitted or kept other tokens" not in log
