"""Smoke tests of the main job (demo) and bench/tpf.py on a tiny checkpoint."""

import json
import sys
from pathlib import Path

import pytest

from sglang_trimode.demo import main as demo_main
from sglang_trimode.models import random_model_path
from sglang_trimode.reference.tiny import make_tiny_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.tpf import main as tpf_main  # noqa: E402


def test_random_model_is_built_once(tmp_path, monkeypatch):
    monkeypatch.setenv("SGLANG_TRIMODE_CACHE", str(tmp_path))
    path = random_model_path()
    assert (path / "config.json").is_file() and path.parent == tmp_path
    mtime = (path / "config.json").stat().st_mtime_ns
    assert random_model_path() == path
    assert (path / "config.json").stat().st_mtime_ns == mtime


def test_demo_prints_every_mode(tmp_path, capsys):
    model = make_tiny_checkpoint(tmp_path / "m", seed=0)
    demo_main(["--model", str(model), "--max-new-tokens", "12", "--block-size", "4"])
    out = capsys.readouterr().out
    for mode in ("ar", "diffusion", "self_spec_linear", "self_spec_quadratic"):
        assert f"[{mode}]" in out
    assert "TPF" in out and "forwards" in out


def test_tpf_bench_writes_json(tmp_path, capsys):
    model = make_tiny_checkpoint(tmp_path / "m", seed=0)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"token_ids": [5, 6, 7]}\n{"token_ids": [8, 9]}\n')
    rows = tpf_main(
        [
            "--model",
            str(model),
            "--prompts",
            str(prompts),
            "--block-sizes",
            "4",
            "--max-new-tokens",
            "10",
            "--bonus-candidates",
            "0,2",
            "--bonus-lengths",
            "0,1",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    data = json.loads((tmp_path / "o" / "tpf.json").read_text())
    assert data["rows"] == json.loads(json.dumps(rows))
    keys = ("mode", "block_size", "bonus_candidates", "bonus_lengths")
    modes = {tuple(r[k] for k in keys) for r in data["rows"]}
    assert modes == {
        ("ar", 1, 0, 0),
        ("diffusion", 4, 0, 0),
        ("self_spec_linear", 4, 0, 0),
        ("self_spec_quadratic", 4, 0, 0),
        ("self_spec_quadratic+bc2", 4, 2, 0),
        ("self_spec_quadratic+bc2g1", 4, 2, 1),
    }
    for r in data["rows"]:
        assert r["requests"] == 2 and r["forwards"] > 0
        assert abs(r["tokens_per_forward"] - r["tokens"] / r["forwards"]) < 1e-9
        assert sum(r["histogram"]) == r["steps"]
        if r["mode"] == "diffusion":  # one denoising count per block, each below the block size
            assert sum(r["denoise_histogram"]) == r["steps"]
            assert len(r["denoise_histogram"]) == r["block_size"]
        else:
            assert r["denoise_histogram"] == []
        tokens, forwards = zip(*r["per_request"])
        assert (sum(tokens), sum(forwards)) == (r["tokens"], r["forwards"])
        lo, hi = r["tokens_per_forward_ci95"]
        assert lo <= r["tokens_per_forward"] + 1e-9 and r["tokens_per_forward"] <= hi + 1e-9
    (diff,) = [r for r in data["rows"] if r["mode"] == "diffusion"]
    blocks, hist = diff["steps"], diff["denoise_histogram"]
    assert f"diffusion block 4: {blocks} blocks by denoising forwards 0..3 = {hist}" in (
        capsys.readouterr().out
    )


def test_tpf_bootstrap_interval():
    from bench.tpf import bootstrap_ci

    assert bootstrap_ci([10, 10, 10], [5, 5, 5]) == (2.0, 2.0)  # identical requests: no spread
    lo, hi = bootstrap_ci([10, 30, 12, 40], [10, 10, 10, 10])
    assert 1.0 <= lo < 2.3 < hi <= 4.0  # 2.3 = the point estimate, inside its resampled range
    assert bootstrap_ci([10, 30, 12, 40], [10, 10, 10, 10]) == (lo, hi)  # seeded
    with pytest.raises(ValueError, match="at least one request"):
        bootstrap_ci([], [])


def test_chars_per_forward_counts_text_after_the_prefill_token():
    from types import SimpleNamespace

    from bench.tpf import chars_per_forward

    class Letters:  # id i -> i letters; id 0 is a special token, "<eos>"
        def decode(self, ids, skip_special_tokens=False):
            keep = [i for i in ids if i or not skip_special_tokens]
            return "".join("x" * i if i else "<eos>" for i in keep)

    outs = [
        SimpleNamespace(token_ids=[7, 2, 3, 0], stats=SimpleNamespace(forwards=2)),
        SimpleNamespace(token_ids=[9, 1], stats=SimpleNamespace(forwards=3)),
    ]
    # (2 + 3) + 1 characters after each request's first (prefill) token, over 5 forwards
    assert chars_per_forward(Letters(), outs) == 6 / 5


def test_paired_tpf_difference_and_compare(tmp_path, capsys):
    from bench.tpf import paired_diff_ci
    from bench.tpf_compare import main as compare_main

    a = [(10, 10), (40, 10), (12, 10), (30, 10)]
    assert paired_diff_ci(a, a) == (0.0, 0.0, 0.0)  # a run against itself: no difference
    b = [(t + 2, f) for t, f in a]  # every prompt gains 0.2 tokens per forward
    diff, lo, hi = paired_diff_ci(a, b)
    assert abs(diff - 0.2) < 1e-12 and abs(lo - 0.2) < 1e-12 and abs(hi - 0.2) < 1e-12
    # unpaired, the prompts' spread (1.0 .. 4.0 TPF) would swamp the 0.2 gain
    assert bootstrap_width(a) > 1.0
    with pytest.raises(ValueError, match="same prompts"):
        paired_diff_ci(a, b[:3])

    opts = {"prompts": 4, "prompt_source": "heldout", "max_new_tokens": 8, "threshold": 0.9}
    row = {"mode": "self_spec_quadratic", "block_size": 8}
    for name, per in (("base", a), ("new", b)):
        tok, fwd = map(sum, zip(*per))
        rec = row | {"tokens_per_forward": tok / fwd, "per_request": per}
        (tmp_path / f"{name}.json").write_text(json.dumps(opts | {"rows": [rec]}))
    rows = compare_main(
        [str(tmp_path / f) for f in ("base.json", "new.json")] + ["--out", str(tmp_path / "o")]
    )
    assert len(rows) == 1 and abs(rows[0]["tpf_diff"] - 0.2) < 1e-12
    assert "+0.20 [+0.20, +0.20]" in capsys.readouterr().out
    (tmp_path / "other.json").write_text(json.dumps(opts | {"prompts": 8, "rows": []}))
    with pytest.raises(SystemExit, match="differ in \\['prompts'\\]"):
        compare_main([str(tmp_path / "base.json"), str(tmp_path / "other.json")])


def bootstrap_width(per):
    from bench.tpf import bootstrap_ci

    lo, hi = bootstrap_ci(*zip(*per))
    return hi - lo
