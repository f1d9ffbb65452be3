"""The draft-only LoRA adapter (adapter/lora.py) and its training (training/drafter.py).

It changes exactly the rows it is told to (the drafting rows), never the rows that verify or
commit, so greedy self-speculation with any adapter still equals greedy AR; it round-trips
through its folder and refuses folders that do not fit; the engine applies it to the
non-committable rows of self-speculation (every such row with ``drafter_rows="all"``); a few
training steps lower the distillation loss.
"""

import json

import pytest
import torch

from sglang_trimode import masks
from sglang_trimode.adapter.lora import (
    DRAFTER_DIR,
    DrafterConfig,
    DrafterLoRA,
    has_drafter,
    load_drafter,
)
from sglang_trimode.reference.engine import TriModeEngine
from sglang_trimode.reference.tiny import make_tiny_checkpoint, make_tiny_model
from sglang_trimode.training.drafter import distill_loss, greedy_rollouts
from sglang_trimode.training.objective import draft_pattern, dual_stream_mask

MODES = ("ar", "diffusion", "self_spec_linear", "self_spec_quadratic")


def random_drafter(model, seed: int = 0, rank: int = 4, std: float = 0.5) -> DrafterLoRA:
    lora = DrafterLoRA.for_model(model, DrafterConfig(rank, 2.0 * rank))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # both factors seeded: lora_A's own init draws from the global RNG
        a_std = lora.lora_A.shape[-1] ** -0.5
        lora.lora_A.copy_(torch.randn(lora.lora_A.shape, generator=gen) * a_std)
        lora.lora_B.copy_(torch.randn(lora.lora_B.shape, generator=gen) * std)
    return lora


def causal_logits(model, ids, gate=None, lora=None):
    n, q = ids.shape
    pos = torch.arange(q).expand(n, -1)
    mask = model.causal_mask(q)
    if lora is None:
        return model(ids, pos, mask)
    with lora.rows(gate):
        return model(ids, pos, mask)


def test_fresh_adapter_and_no_gate_are_the_base_model():
    model = make_tiny_model(seed=1)
    ids = torch.randint(
        4, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0)
    )
    base = causal_logits(model, ids)
    fresh = DrafterLoRA.for_model(model, DrafterConfig(4, 8.0)).attach(model)
    assert torch.equal(causal_logits(model, ids, torch.ones(2, 12, dtype=torch.bool), fresh), base)
    trained = random_drafter(model).attach(model)  # replaces nothing: a second set of hooks
    fresh.detach()
    assert torch.equal(causal_logits(model, ids, None, trained), base)
    assert torch.equal(
        causal_logits(model, ids, torch.zeros(2, 12, dtype=torch.bool), trained), base
    )
    trained.detach()


def test_only_gated_rows_change_and_earlier_causal_rows_are_exact():
    """Causal forward, the adapter on the last 5 rows: rows 0..6 (which never see a gated row)
    are bit-identical to the base model, the gated rows differ."""
    model = make_tiny_model(seed=2)
    ids = torch.randint(
        4, model.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(1)
    )
    base = causal_logits(model, ids)
    lora = random_drafter(model).attach(model)
    gate = torch.zeros(1, 12, dtype=torch.bool)
    gate[0, 7:] = True
    got = causal_logits(model, ids, gate, lora)
    lora.detach()
    assert torch.equal(got[0, :7], base[0, :7])
    assert (got[0, 7:] - base[0, 7:]).abs().amax(-1).min() > 1e-3


def test_gate_of_the_wrong_shape_is_refused():
    model = make_tiny_model(seed=2)
    lora = random_drafter(model).attach(model)
    with pytest.raises(RuntimeError, match="one flag per token row"):
        causal_logits(model, torch.full((1, 6), 5), torch.ones(1, 5, dtype=torch.bool), lora)
    lora.detach()


def test_save_load_round_trip_and_refusals(tmp_path):
    model = make_tiny_model(seed=3)
    c = model.config
    shape = (c.num_hidden_layers, c.num_attention_heads * c.head_dim, c.hidden_size)
    lora = random_drafter(model, rank=3)
    folder = lora.save(tmp_path)
    assert folder == tmp_path / DRAFTER_DIR and has_drafter(tmp_path)
    back = load_drafter(folder, *shape)
    assert back.cfg == lora.cfg
    assert torch.equal(back.lora_A, lora.lora_A) and torch.equal(back.lora_B, lora.lora_B)
    with pytest.raises(ValueError, match="do not match a 5-layer model"):
        load_drafter(folder, 5, *shape[1:])
    with pytest.raises(ValueError, match=r"has shape .* expected"):
        load_drafter(folder, shape[0], shape[1] * 2, shape[2])
    conf = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps(conf | {"target_modules": ["q_proj"]}))
    with pytest.raises(ValueError, match="target_modules must name 'o_proj' only"):
        load_drafter(folder, *shape)
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="--trimode-drafter off"):
        load_drafter(folder, *shape)
    assert not has_drafter(tmp_path / "elsewhere")


def test_engine_gates_the_non_committable_rows_of_every_forward():
    """With `drafter_rows="all"` every forward's gate is exactly its segments' rows past
    `desc.committable`: none in a prefill / AR step / commit / verify, all of a diffusion or
    linear draft, a quadratic step's mask groups (the scopes: tests/test_vendor_drafter.py)."""
    model = make_tiny_model(seed=4)
    engine = TriModeEngine(model, drafter=random_drafter(model), drafter_rows="all")
    seen: list[tuple[list, torch.Tensor | None]] = []
    forward = engine._forward

    def spy(cache, rows, segs):
        real = engine.drafter.rows

        def rows_spy(gate):
            seen.append(([s.desc for s in segs], None if gate is None else gate.clone()))
            return real(gate)

        engine.drafter.rows = rows_spy
        try:
            return forward(cache, rows, segs)
        finally:
            engine.drafter.rows = real

    engine._forward = spy
    prompts = [[5, 6, 7], [8, 9], [10, 11], [12]]
    engine.generate(prompts, mode=list(MODES), max_new_tokens=10, block_size=4)
    kinds = set()
    for descs, gate in seen:
        for j, d in enumerate(descs):
            want = torch.zeros(gate.shape[1], dtype=torch.bool)
            want[d.committable : d.length] = True
            assert torch.equal(gate[j], want), d
            kinds.add((d.kind, d.committable == d.length, d.committable == 0))
    assert (masks.MaskKind.QUADRATIC, False, False) in kinds  # mask groups gated, drafts not
    assert (masks.MaskKind.BLOCK, False, True) in kinds  # a linear draft: all gated
    assert (masks.MaskKind.BLOCK, True, False) in kinds  # verify / prefill: none


@pytest.mark.parametrize("block_size", [1, 4])
def test_greedy_self_spec_with_a_drafter_equals_ar_and_the_drafter_drafts(tmp_path, block_size):
    path = make_tiny_checkpoint(tmp_path / "ckpt", seed=5)
    plain = TriModeEngine.from_pretrained(path)
    assert plain.drafter is None and not has_drafter(path)
    random_drafter(plain.model, seed=1, std=2.0).save(path)
    engine = TriModeEngine.from_pretrained(path)
    assert engine.drafter is not None
    assert TriModeEngine.from_pretrained(path, drafter=False).drafter is None
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    kw = dict(max_new_tokens=16, block_size=block_size, stop_token_ids=[])
    ar = [o.token_ids for o in plain.generate(prompts, mode="ar", **kw)]
    for mode in ("self_spec_linear", "self_spec_quadratic"):
        assert [o.token_ids for o in engine.generate(prompts, mode=mode, **kw)] == ar, mode
    everywhere = TriModeEngine.from_pretrained(path, drafter_rows="all")
    diff_on = [o.token_ids for o in everywhere.generate(prompts, mode="diffusion", **kw)]
    diff_off = [o.token_ids for o in plain.generate(prompts, mode="diffusion", **kw)]
    # the default scope (self_spec) leaves diffusion blocks to the base model
    assert [o.token_ids for o in engine.generate(prompts, mode="diffusion", **kw)] == diff_off
    if block_size == 1:  # block-1 diffusion is AR: nothing drafts
        assert diff_on == diff_off == ar
    else:  # diffusion tokens are the drafts themselves: a large random adapter changes them
        assert diff_on != diff_off


def test_draft_pattern_masks_a_suffix_of_every_block():
    m = draft_pattern(64, 20, 8, torch.Generator().manual_seed(0))
    for row in m:
        for start in range(0, 20, 8):
            blk = row[start : start + 8]
            known = int((~blk).sum())
            assert known in (0, 1) and bool(blk[known:].all())
    first = m[:, ::8]
    assert first.any() and not first.all()  # both c = 0 and c = 1 occur


@pytest.mark.parametrize("start", [0, 8])
def test_distillation_lowers_the_loss_and_leaves_the_base_frozen(start):
    """``start`` 0: KL to the AR head on corpus-like text; 8: cross-entropy toward the tokens
    after an 8-token prefix (a rollout's continuation)."""
    model = make_tiny_model(seed=6)
    for p in model.parameters():
        p.requires_grad_(False)
    before = [p.clone() for p in model.parameters()]
    lora = DrafterLoRA.for_model(model, DrafterConfig(8, 16.0)).attach(model)
    opt = torch.optim.AdamW(lora.parameters(), lr=1e-2, weight_decay=0.0)
    t, block = 16, 4
    mask = model.additive_mask(dual_stream_mask(t, block), torch.float32)
    data = torch.randint(
        4, model.config.vocab_size, (8, t), generator=torch.Generator().manual_seed(2)
    )

    def loss_at(seed):
        gen = torch.Generator().manual_seed(seed)
        mask_id = model.config.mask_token_id
        return distill_loss(model, lora, data, block, mask_id, gen, mask, 0.5, start)

    first = float(loss_at(0).detach())
    model.train()
    for _ in range(30):
        loss = loss_at(0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert float(loss_at(0).detach()) < 0.8 * first
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    lora.detach()


def test_export_carries_the_sources_drafter_and_drops_a_stale_one(tmp_path):
    from sglang_trimode.training.export import export

    with_lora = make_tiny_checkpoint(tmp_path / "a", seed=7)
    random_drafter(make_tiny_model(seed=7), seed=3).save(with_lora)
    dst = export(with_lora, tmp_path / "dst", torch.float32)
    assert has_drafter(dst)
    assert TriModeEngine.from_pretrained(dst).drafter is not None
    without = make_tiny_checkpoint(tmp_path / "b", seed=8)
    export(without, dst, torch.float32)  # new weights: the old adapter must not stay
    assert not has_drafter(dst) and not (dst / DRAFTER_DIR).exists()


def test_rollouts_are_prefixes_plus_the_models_greedy_continuation():
    model = make_tiny_model(seed=9)
    stream = torch.randint(
        4, model.config.vocab_size, (200,), generator=torch.Generator().manual_seed(3)
    )
    rolls = greedy_rollouts(model, stream, 5, 6, 7, torch.Generator().manual_seed(0), batch=2)
    assert rolls.shape == (5, 13)
    engine = TriModeEngine(make_tiny_model(seed=9))
    for row in rolls.tolist():
        prefix = row[:6]
        assert any(prefix == stream[s : s + 6].tolist() for s in range(len(stream) - 6))
        want = engine.generate([prefix], mode="ar", max_new_tokens=7, stop_token_ids=[])[0]
        assert row[6:] == list(want.token_ids)


def test_loss_ignores_the_prefix_of_a_rollout():
    """With ``start`` the positions before it are never masked and never scored: changing the
    text there changes the context only, and a prefix-only change leaves the targets alone."""
    model = make_tiny_model(seed=10)
    lora = DrafterLoRA.for_model(model, DrafterConfig(4, 8.0)).attach(model)
    t, block, start = 16, 4, 12
    mask = model.additive_mask(dual_stream_mask(t, block), torch.float32)
    x = torch.randint(
        4, model.config.vocab_size, (4, t), generator=torch.Generator().manual_seed(4)
    )
    mask_id = model.config.mask_token_id
    seen = {}
    forward = model.forward

    def spy(ids, pos, attn):
        seen["noisy"] = ids[:, t:].clone()
        return forward(ids, pos, attn)

    model.forward = spy
    gen = torch.Generator().manual_seed(0)
    loss = distill_loss(model, lora, x, block, mask_id, gen, mask, 1.0, start)
    del model.forward
    assert torch.equal(seen["noisy"][:, :start], x[:, :start])  # prefix never masked
    masked = seen["noisy"][:, start:] == mask_id
    assert masked.any()
    with lora.rows(torch.cat([torch.zeros(4, t), torch.ones(4, t)], 1).bool()):
        logits = model(
            torch.cat([x, seen["noisy"]], 1), torch.arange(t).repeat(2).expand(4, -1), mask
        )
    ce = torch.nn.functional.cross_entropy(
        logits[:, t + start :].reshape(-1, logits.shape[-1]),
        x[:, start:].reshape(-1),
        reduction="none",
    ).view(4, -1)
    torch.testing.assert_close(loss, (ce * masked).sum() / masked.sum())
    lora.detach()
