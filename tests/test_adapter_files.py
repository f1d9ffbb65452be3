"""Which drafter folder an engine takes (`--trimode-drafter on|off|PATH`, the older
`drafter_lora/` still read) and the refusals of malformed adapters: each names the file and the
field (adapter/files.py; the server's launch check is in tests/srt/test_flags.py)."""

from __future__ import annotations

import json
import shutil

import pytest
from _deps import require

require("peft", reason="peft writes the adapters (requirements/test.txt)")

from vendor_adapter import write_peft_adapter  # noqa: E402

from sglang_trimode.adapter.files import (  # noqa: E402
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    LEGACY_DIR,
    VENDOR_DIR,
    adapter_folder,
    local_checkpoint,
)
from sglang_trimode.reference.engine import TriModeEngine  # noqa: E402
from sglang_trimode.reference.tiny import make_tiny_checkpoint  # noqa: E402


@pytest.fixture()
def ckpt(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "ckpt", seed=7)
    write_peft_adapter(path, seed=1)
    return path


def _edit_config(ckpt, **fields) -> None:
    conf_file = ckpt / VENDOR_DIR / ADAPTER_CONFIG
    conf_file.write_text(json.dumps(json.loads(conf_file.read_text()) | fields))


def test_on_off_path_and_the_older_folder(ckpt, tmp_path):
    on = TriModeEngine.from_pretrained(ckpt)
    assert on.drafter is not None and on.drafter.cfg.rank == 8
    assert TriModeEngine.from_pretrained(ckpt, drafter="off").drafter is None
    assert TriModeEngine.from_pretrained(ckpt, drafter=False).drafter is None
    elsewhere = tmp_path / "my_adapter"
    shutil.copytree(ckpt / VENDOR_DIR, elsewhere)
    by_path = TriModeEngine.from_pretrained(ckpt, drafter=str(elsewhere))
    assert (by_path.drafter.lora_B == on.drafter.lora_B).all()
    (ckpt / VENDOR_DIR).rename(ckpt / LEGACY_DIR)  # a checkpoint of the older layout
    legacy = TriModeEngine.from_pretrained(ckpt)
    assert (legacy.drafter.lora_A == on.drafter.lora_A).all()
    shutil.copytree(ckpt / LEGACY_DIR, ckpt / VENDOR_DIR)
    with pytest.raises(ValueError, match="two drafter adapters, linear_spec_lora/ and drafter"):
        TriModeEngine.from_pretrained(ckpt)
    assert TriModeEngine.from_pretrained(ckpt, drafter=str(ckpt / VENDOR_DIR)).drafter is not None
    with pytest.raises(FileNotFoundError, match="no such adapter folder"):
        TriModeEngine.from_pretrained(ckpt, drafter=str(tmp_path / "missing"))


def test_wrong_target_module_is_refused(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "ckpt", seed=7)
    write_peft_adapter(path, target="q_proj")  # peft writes it; we refuse it
    want = rf"{VENDOR_DIR}/{ADAPTER_CONFIG}: target_modules must name 'o_proj' only.*q_proj"
    with pytest.raises(ValueError, match=want):
        TriModeEngine.from_pretrained(path)


def test_rank_of_the_tensors_must_agree_with_the_config(ckpt):
    _edit_config(ckpt, r=4)
    want = rf"{ADAPTER_WEIGHTS}: .*lora_A.weight has shape \(8, 64\), expected \(4, 64\) \(field r"
    with pytest.raises(ValueError, match=want):
        TriModeEngine.from_pretrained(ckpt)


@pytest.mark.parametrize("name", [ADAPTER_CONFIG, ADAPTER_WEIGHTS])
def test_a_missing_file_is_refused(ckpt, name):
    (ckpt / VENDOR_DIR / name).unlink()
    with pytest.raises(FileNotFoundError, match=rf"{VENDOR_DIR}/{name}: missing"):
        TriModeEngine.from_pretrained(ckpt)
    assert TriModeEngine.from_pretrained(ckpt, drafter="off").drafter is None  # the way out


@pytest.mark.parametrize(
    ("fields", "want"),
    [
        ({"use_rslora": True}, "use_rslora = True is not supported"),
        ({"use_dora": True}, "use_dora = True is not supported"),
        ({"bias": "all"}, "bias = 'all' is not supported"),
        ({"rank_pattern": {"o_proj": 4}}, "rank_pattern = .* is not supported"),
        ({"layers_to_transform": [0]}, "layers_to_transform = .* is not supported"),
        ({"peft_type": "IA3"}, "peft_type must be 'LORA'"),
        ({"r": "8"}, "r must be an integer >= 1, got '8'"),
        ({"lora_alpha": 0}, "lora_alpha must be a number > 0"),
        ({"target_modules": "o_proj|q_proj"}, "target_modules must name 'o_proj' only"),
    ],
)
def test_config_fields_the_engines_cannot_apply_are_refused(ckpt, fields, want):
    _edit_config(ckpt, **fields)
    with pytest.raises(ValueError, match=rf"{ADAPTER_CONFIG}: {want}"):
        TriModeEngine.from_pretrained(ckpt)


def test_tensors_of_another_model_and_bad_json_are_refused(ckpt, tmp_path):
    other = make_tiny_checkpoint(tmp_path / "three", seed=7, num_hidden_layers=3)
    write_peft_adapter(other)
    shutil.rmtree(ckpt / VENDOR_DIR)
    shutil.copytree(other / VENDOR_DIR, ckpt / VENDOR_DIR)
    with pytest.raises(ValueError, match="do not match a 2-layer model's o_proj LoRA"):
        TriModeEngine.from_pretrained(ckpt)
    (ckpt / VENDOR_DIR / ADAPTER_CONFIG).write_text("{r: 8")
    with pytest.raises(ValueError, match=f"{ADAPTER_CONFIG}: not JSON"):
        TriModeEngine.from_pretrained(ckpt)


def test_a_hub_ids_drafter_is_found_in_the_hub_cache(ckpt, tmp_path):
    """A hub id (the recipes' `--model-path nvidia/...`) resolves to the cached snapshot that
    holds its `linear_spec_lora/` (the worker fetches it into SGLang's `--download-dir`; here a
    cache laid out as huggingface_hub lays it out, read offline)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--tiny"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(ckpt / VENDOR_DIR, snapshot / VENDOR_DIR)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    cache = str(tmp_path / "hub")
    local = local_checkpoint("org/tiny", cache_dir=cache, local_files_only=True)
    assert local == snapshot and adapter_folder(local, "on") == snapshot / VENDOR_DIR
    assert local_checkpoint(ckpt) == ckpt  # a folder is itself
    with pytest.raises(ValueError, match="cannot fetch the drafter folders of org/missing"):
        local_checkpoint("org/missing", cache_dir=cache, local_files_only=True)
