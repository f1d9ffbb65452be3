"""Our model == transformers' Ministral3ForCausalLM with the same weights (causal logits)."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, Ministral3Config, Ministral3ForCausalLM

from sglang_trimode.reference import NemotronLabsDiffusionModel, make_tiny_model

SEQ = 256  # original_max_position_embeddings is 64: floor(pos / 64) reaches 3
TOL = {"rtol": 1e-5, "atol": 1e-4}  # fp32; logits are O(10)


def _hf_twin(
    model: NemotronLabsDiffusionModel, attn: str, **rope_overrides
) -> Ministral3ForCausalLM:
    cfg = model.config
    hf_cfg = Ministral3Config(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.pad_token_id,
        tie_word_embeddings=False,
        rope_parameters={**cfg.rope_parameters, **rope_overrides},
    )
    hf_cfg._attn_implementation = attn
    hf = Ministral3ForCausalLM(hf_cfg)
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "diffusion_head.weight":
            state["lm_head.weight"] = tensor
        else:
            state["model." + name.removeprefix("encoder.")] = tensor
    hf.load_state_dict(state, strict=True)
    return hf.eval()


def _inputs(offsets: tuple[int, ...] = (0, 0)) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    ids = torch.randint(4, 128, (len(offsets), SEQ), generator=gen)
    pos = torch.stack([torch.arange(SEQ) + o for o in offsets])
    return ids, pos


@pytest.fixture(scope="module")
def model() -> NemotronLabsDiffusionModel:
    return make_tiny_model(seed=2)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@torch.no_grad()
def test_causal_logits_equal_hf(attn) -> None:
    ours = make_tiny_model(seed=2, attn_implementation=attn)
    hf = _hf_twin(ours, attn)
    ids, pos = _inputs()
    ref = hf(input_ids=ids, position_ids=pos, use_cache=False).logits.float()
    got = ours(ids, pos)
    assert got.dtype == torch.float32 and got.shape == (2, SEQ, 128)
    torch.testing.assert_close(got, ref, **TOL)
    mask = NemotronLabsDiffusionModel.causal_mask(SEQ).expand(2, 1, SEQ, SEQ)
    torch.testing.assert_close(ours(ids, pos, attention_mask=mask), ref, **TOL)


@torch.no_grad()
def test_row_specific_positions_equal_hf(model) -> None:
    hf = _hf_twin(model, "sdpa")
    ids, pos = _inputs(offsets=(0, 700))
    ref = hf(input_ids=ids, position_ids=pos, use_cache=False).logits.float()
    mask = model.causal_mask(SEQ)
    torch.testing.assert_close(model(ids, pos, attention_mask=mask), ref, **TOL)


@torch.no_grad()
def test_llama4_scaling_is_exercised(model) -> None:
    """The comparison would notice a missing Llama-4 query scaling at these positions."""
    ids, pos = _inputs()
    unscaled = _hf_twin(model, "sdpa", llama_4_scaling_beta=0.0)
    ref = unscaled(input_ids=ids, position_ids=pos, use_cache=False).logits.float()
    got = model(ids, pos)
    torch.testing.assert_close(got[:, :64], ref[:, :64], **TOL)  # scale is 1 below 64
    assert (got[:, 64:] - ref[:, 64:]).abs().max() > 1e-2


@torch.no_grad()
def test_additive_mask_values_and_shapes() -> None:
    allowed = torch.tensor([[True, False], [True, True]])
    m = NemotronLabsDiffusionModel.additive_mask(allowed, torch.bfloat16)
    assert m.shape == (1, 1, 2, 2) and m.dtype == torch.bfloat16
    assert m[0, 0, 0, 0] == 0 and m[0, 0, 0, 1] == torch.finfo(torch.bfloat16).min
    assert NemotronLabsDiffusionModel.additive_mask(allowed[None], torch.float32).shape == (
        1,
        1,
        2,
        2,
    )
    with pytest.raises(TypeError):
        NemotronLabsDiffusionModel.additive_mask(allowed.float(), torch.float32)


@torch.no_grad()
def test_cache_pass_through_matches_full_sequence(model) -> None:
    """A cache object's update() is used as-is: prefill + continuation == one full forward."""
    ids, pos = _inputs()
    full = model(ids, pos)
    cache = DynamicCache(config=model.config)
    cut = 150
    first = model(ids[:, :cut], pos[:, :cut], model.causal_mask(cut), past_key_values=cache)
    mask = model.causal_mask(SEQ - cut, past_len=cut)
    second = model(ids[:, cut:], pos[:, cut:], mask, past_key_values=cache)
    torch.testing.assert_close(torch.cat([first, second], 1), full, **TOL)


@torch.no_grad()
def test_bad_inputs_are_rejected(model) -> None:
    ids, pos = _inputs()
    with pytest.raises(ValueError, match="position_ids"):
        model(ids, pos[:, :10])
    with pytest.raises(ValueError, match="additive"):
        model(ids, pos, torch.ones(1, 1, SEQ, SEQ, dtype=torch.bool))
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, pos, torch.zeros(1, SEQ, SEQ))
