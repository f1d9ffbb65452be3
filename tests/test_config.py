"""NemotronLabsDiffusionConfig: AutoConfig round trip of an 8B-shaped config.json, validation."""

from __future__ import annotations

import json

import pytest
from transformers import AutoConfig

from sglang_trimode.config import (
    DLM_PARADIGMS,
    MODEL_TYPE,
    NemotronLabsDiffusionConfig,
    register_config,
)
from sglang_trimode.reference.tiny import tiny_config

ROPE_8B = {
    "type": "yarn",
    "factor": 16.0,
    "original_max_position_embeddings": 16384,
    "llama_4_scaling_beta": 0.1,
    "rope_theta": 1000000.0,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "mscale": 1.0,
    "mscale_all_dim": 1.0,
}

CONFIG_8B = {
    "architectures": ["NemotronLabsDiffusionModel"],
    "model_type": "nemotron_labs_diffusion",
    "vocab_size": 131072,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 34,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_act": "silu",
    "max_position_embeddings": 262144,
    "rms_norm_eps": 1e-05,
    "bos_token_id": 1,
    "eos_token_id": 11,
    "pad_token_id": 11,
    "mask_token_id": 100,
    "block_size": 32,
    "dlm_paradigm": "bidirectional",
    "tie_word_embeddings": False,
    "sliding_window": None,
    "attention_dropout": 0.0,
    "rope_parameters": ROPE_8B,
    # fields of the vendor's config that we only pass through
    "attention_bias": False,
    "mlp_bias": False,
    "dlm_loss_weight": None,
    "dp_varying_mask_ratio": False,
}


def _check_8b(cfg: NemotronLabsDiffusionConfig) -> None:
    assert type(cfg) is NemotronLabsDiffusionConfig
    for key, value in CONFIG_8B.items():
        if key == "rope_parameters":
            continue
        assert getattr(cfg, key) == value, key
    rope = cfg.rope_parameters
    for key, value in ROPE_8B.items():
        assert rope[key] == value, key
    assert rope["rope_type"] == "yarn"  # "type" is normalised to "rope_type" (and kept)
    assert cfg.kv_group_size == 4
    assert cfg.eos_token_ids == (11,)


def test_defaults_match_the_8b_checkpoint() -> None:
    cfg = NemotronLabsDiffusionConfig()
    assert cfg.model_type == MODEL_TYPE
    assert cfg.architectures == ["NemotronLabsDiffusionModel"]
    for key in ("vocab_size", "eos_token_id", "mask_token_id", "block_size", "head_dim"):
        assert getattr(cfg, key) == CONFIG_8B[key], key
    assert cfg.tie_word_embeddings is False
    assert cfg.rope_parameters["factor"] == 16.0
    assert cfg.rope_parameters["original_max_position_embeddings"] == 16384
    assert cfg.rope_parameters["llama_4_scaling_beta"] == 0.1


def test_for_model_gives_our_class() -> None:
    kwargs = {k: v for k, v in CONFIG_8B.items() if k != "model_type"}
    kwargs["rope_parameters"] = dict(ROPE_8B)
    _check_8b(AutoConfig.for_model(MODEL_TYPE, **kwargs))


def test_from_pretrained_round_trip(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(CONFIG_8B))
    cfg = AutoConfig.from_pretrained(tmp_path)
    _check_8b(cfg)
    out = tmp_path / "saved"
    cfg.save_pretrained(out)
    again = AutoConfig.from_pretrained(out)
    _check_8b(again)
    first, second = cfg.to_dict(), again.to_dict()
    first.pop("_name_or_path")
    second.pop("_name_or_path")
    assert second == first


def test_registration_is_idempotent() -> None:
    register_config()
    register_config()
    assert AutoConfig.for_model(MODEL_TYPE).__class__ is NemotronLabsDiffusionConfig


def test_list_eos_and_derived_values() -> None:
    cfg = tiny_config(eos_token_id=[2, 5])
    assert cfg.eos_token_ids == (2, 5)
    assert cfg.kv_group_size == 2


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"mask_token_id": 128}, "mask_token_id"),
        ({"mask_token_id": -1}, "mask_token_id"),
        ({"eos_token_id": 500}, "eos_token_id"),
        ({"eos_token_id": [2, 128]}, "eos_token_id"),
        ({"eos_token_id": []}, "eos_token_id"),
        ({"eos_token_id": 3}, "mask_token_id"),  # eos equal to the mask token
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"block_size": 0}, "block_size"),
        ({"dlm_paradigm": "sideways"}, "dlm_paradigm"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"head_dim": 0}, "head_dim"),
        ({"num_hidden_layers": 0}, "num_hidden_layers"),
        ({"tie_word_embeddings": True}, "tie_word_embeddings"),
        ({"attention_bias": True}, "attention_bias"),
        ({"sliding_window": 128}, "sliding_window"),
        ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}, "llama_4_scaling_beta"),
    ],
)
def test_invalid_values_raise_naming_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        tiny_config(**overrides)


def test_every_known_paradigm_is_accepted() -> None:
    for paradigm in DLM_PARADIGMS:
        assert tiny_config(dlm_paradigm=paradigm).dlm_paradigm == paradigm


def test_dlm_paradigm_error_lists_valid_values() -> None:
    with pytest.raises(ValueError, match="bidirectional"):
        tiny_config(dlm_paradigm="sideways")
