"""Greedy AR of the reference engine equals transformers' own Ministral3ForCausalLM.generate."""

import pytest
import torch
from transformers import Ministral3Config, Ministral3ForCausalLM

from sglang_trimode import TriModeEngine
from sglang_trimode.reference.tiny import make_tiny_model


def to_hf_causal_lm(model) -> Ministral3ForCausalLM:
    """Same weights in code nobody here wrote: encoder.* -> model.*, diffusion_head -> lm_head."""
    cfg = model.config.to_dict()
    for key in ("model_type", "architectures", "mask_token_id", "block_size", "dlm_paradigm"):
        cfg.pop(key, None)
    hf = Ministral3ForCausalLM(Ministral3Config(**cfg)).eval()
    state = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("encoder."):
            state["model." + name[len("encoder.") :]] = tensor
        elif name == "diffusion_head.weight":
            state["lm_head.weight"] = tensor
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary" in m for m in missing), (missing, unexpected)
    return hf


@pytest.mark.slow
def test_greedy_ar_equals_transformers_generate():
    model = make_tiny_model(seed=1)
    hf = to_hf_causal_lm(model)
    engine = TriModeEngine(model)
    g = torch.Generator().manual_seed(3)
    # long enough that the Llama-4 query scaling (original_max_position_embeddings of the tiny
    # config) changes values inside the generated span
    prompts = [
        torch.randint(4, model.config.vocab_size, (n,), generator=g).tolist() for n in (5, 70)
    ]
    outs = engine.generate(prompts, mode="ar", max_new_tokens=80, stop_token_ids=[])
    for p, o in zip(prompts, outs):
        ref = hf.generate(
            torch.tensor([p]),
            max_new_tokens=80,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
            attention_mask=torch.ones(1, len(p), dtype=torch.long),
        )
        assert o.token_ids == ref[0, len(p) :].tolist()
