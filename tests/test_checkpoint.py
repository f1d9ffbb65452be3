"""Checkpoint save/load: HF layout, sharding, dtype, strict name checks."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from sglang_trimode.reference import (
    CheckpointError,
    NemotronLabsDiffusionModel,
    load_config,
    load_model,
    make_tiny_checkpoint,
    make_tiny_model,
    save_checkpoint,
)
from sglang_trimode.reference.checkpoint import INDEX_NAME, WEIGHTS_NAME

SEQ = 96  # past original_max_position_embeddings (64): Llama-4 scaling active


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 128, (2, SEQ), generator=gen)
    return ids, torch.arange(SEQ).expand(2, SEQ)


@torch.no_grad()
def _logits(model: NemotronLabsDiffusionModel) -> torch.Tensor:
    return model(*_inputs())


def test_parameter_names_match_the_hf_checkpoint() -> None:
    names = [n for n, _ in make_tiny_model().named_parameters()]
    layer = [
        "self_attn.q_proj.weight",
        "self_attn.k_proj.weight",
        "self_attn.v_proj.weight",
        "self_attn.o_proj.weight",
        "mlp.gate_proj.weight",
        "mlp.up_proj.weight",
        "mlp.down_proj.weight",
        "input_layernorm.weight",
        "post_attention_layernorm.weight",
    ]
    expected = ["encoder.embed_tokens.weight"]
    expected += [f"encoder.layers.{i}.{p}" for i in range(2) for p in layer]
    expected += ["encoder.norm.weight", "diffusion_head.weight"]
    assert sorted(names) == sorted(expected)
    assert names[0] == "encoder.embed_tokens.weight"
    assert names[-1] == "diffusion_head.weight"


def test_unsharded_round_trip(tmp_path) -> None:
    model = make_tiny_model(seed=3)
    save_checkpoint(model, tmp_path)
    assert (tmp_path / WEIGHTS_NAME).is_file() and not (tmp_path / INDEX_NAME).exists()
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["architectures"] == ["NemotronLabsDiffusionModel"]
    assert cfg["model_type"] == "nemotron_labs_diffusion"

    loaded = load_model(tmp_path)
    assert not loaded.training
    ref, got = model.state_dict(), loaded.state_dict()
    assert ref.keys() == got.keys()
    for name in ref:
        assert torch.equal(ref[name], got[name]), name
    assert torch.equal(_logits(model), _logits(loaded))


def test_sharded_round_trip(tmp_path) -> None:
    model = make_tiny_model(seed=4)
    total = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    save_checkpoint(model, tmp_path, max_shard_bytes=total // 4)
    shards = sorted(tmp_path.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 3
    assert not (tmp_path / WEIGHTS_NAME).exists()
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    assert index["metadata"]["total_size"] == total
    assert set(index["weight_map"]) == set(model.state_dict())
    assert set(index["weight_map"].values()) == {s.name for s in shards}

    loaded = load_model(tmp_path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    assert torch.equal(_logits(model), _logits(loaded))


def test_resave_unsharded_removes_old_shards(tmp_path) -> None:
    make_tiny_checkpoint(tmp_path, max_shard_bytes=20_000)
    make_tiny_checkpoint(tmp_path)
    assert not list(tmp_path.glob("model-*")) and not (tmp_path / INDEX_NAME).exists()
    load_model(tmp_path)


def test_bf16_load_is_close_to_fp32(tmp_path) -> None:
    path = make_tiny_checkpoint(tmp_path, seed=5)
    fp32 = load_model(path)
    bf16 = load_model(path, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    assert bf16.encoder.rotary_emb.inv_freq.dtype == torch.float32
    a, b = _logits(fp32), _logits(bf16)
    assert b.dtype == torch.float32
    # bf16 keeps 8 mantissa bits (eps 2^-7); allow a few dozen roundings through 2 layers.
    eps = torch.finfo(torch.bfloat16).eps
    err = (a - b).abs().max().item()
    assert err <= 32 * eps * a.abs().max().item(), err
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9


def test_renamed_tensor_reports_missing_and_unexpected(tmp_path) -> None:
    path = make_tiny_checkpoint(tmp_path)
    state = load_file(str(path / WEIGHTS_NAME))
    state["encoder.layers.1.mlp.gate.weight"] = state.pop("encoder.layers.1.mlp.gate_proj.weight")
    save_file(state, str(path / WEIGHTS_NAME))
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    msg = str(err.value)
    assert "missing tensors: encoder.layers.1.mlp.gate_proj.weight" in msg
    assert "unexpected tensors: encoder.layers.1.mlp.gate.weight" in msg


def test_shape_mismatch_is_named(tmp_path) -> None:
    path = make_tiny_checkpoint(tmp_path)
    state = load_file(str(path / WEIGHTS_NAME))
    state["diffusion_head.weight"] = state["diffusion_head.weight"][:, :32].contiguous()
    save_file(state, str(path / WEIGHTS_NAME))
    with pytest.raises(CheckpointError, match=r"diffusion_head\.weight \(checkpoint \[128, 32\]"):
        load_model(path)


def test_many_missing_names_are_truncated(tmp_path) -> None:
    path = make_tiny_checkpoint(tmp_path, num_hidden_layers=4)
    state = load_file(str(path / WEIGHTS_NAME))
    for key in [k for k in state if k.startswith("encoder.layers.")]:
        del state[key]
    save_file(state, str(path / WEIGHTS_NAME))
    with pytest.raises(CheckpointError, match=r"36 missing tensors: .*\(16 more\)"):
        load_model(path)


def test_wrong_architecture_is_named(tmp_path) -> None:
    path = make_tiny_checkpoint(tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["architectures"] = ["MistralForCausalLM"]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="architectures"):
        load_config(path)
    with pytest.raises(ValueError, match="architectures"):
        load_model(path)


def test_wrong_model_type_is_named(tmp_path) -> None:
    path = make_tiny_checkpoint(tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["model_type"] = "ministral3"
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="model_type"):
        load_config(path)


def test_missing_folder_and_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_config(tmp_path)
    path = make_tiny_checkpoint(tmp_path / "ckpt")
    (path / WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=WEIGHTS_NAME):
        load_model(path)


def test_lora_folder_is_ignored_and_eager_loads(tmp_path) -> None:
    path = make_tiny_checkpoint(tmp_path, seed=6)
    lora = path / "linear_spec_lora"
    lora.mkdir()
    save_file({"base_model.o_proj.lora_A.weight": torch.zeros(4, 64)}, str(lora / "x.safetensors"))
    sdpa = load_model(path)
    eager = load_model(path, attn_implementation="eager")
    assert eager.attn_implementation == "eager" and sdpa.attn_implementation == "sdpa"
    # different kernels sum in different orders: fp32 rounding only
    torch.testing.assert_close(_logits(eager), _logits(sdpa), rtol=1e-4, atol=1e-4)


def test_same_seed_same_weights() -> None:
    a, b, c = make_tiny_model(seed=7), make_tiny_model(seed=7), make_tiny_model(seed=8)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.diffusion_head.weight, c.diffusion_head.weight)
    logits = _logits(a)
    assert logits.argmax(-1).unique().numel() > 10  # non-degenerate


def test_to_bf16_keeps_rope_buffers_fp32_and_matches_bf16_load(tmp_path) -> None:
    model = make_tiny_model(seed=9)
    loaded = load_model(make_tiny_checkpoint(tmp_path, seed=9), dtype=torch.bfloat16)
    cast = model.to(torch.bfloat16)
    assert cast.diffusion_head.weight.dtype == torch.bfloat16
    assert cast.encoder.rotary_emb.inv_freq.dtype == torch.float32
    assert cast.encoder.rotary_emb.original_inv_freq.dtype == torch.float32
    assert torch.equal(_logits(cast), _logits(loaded))
    back = cast.float()
    assert back.diffusion_head.weight.dtype == torch.float32
