"""SPEED-Bench runner: dataset loading and refusals, reference-format metrics, every backend we can
run on a CPU. The HTTP test here is a PROTOCOL test against ``protocol_server`` (the reference
engine behind OpenAI/native endpoints); the test against a real ``sglang.launch_server`` is
``tests/test_speed_bench_server.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.speed_bench.backends.base import (
    BackendUnavailable,
    GenConfig,
    RequestResult,
    TurnResult,
)
from bench.speed_bench.cli import main
from bench.speed_bench.dataset import (
    CATEGORIES,
    ENTROPY_TIERS,
    FIELDS,
    PLACEHOLDER,
    SAMPLES,
    DatasetError,
    Request,
    load_requests,
)
from bench.speed_bench.metrics import specbench, statistics, timing
from sglang_trimode.models import default_model_path, load_tokenizer

MODES = ["ar", "diffusion", "self_spec_linear", "self_spec_quadratic"]
ROW = {f: "x" for f in FIELDS} | {"turns": ["hi"], "multiturn": False}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from sglang_trimode.reference.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("speed") / "tiny", seed=0)


def test_samples_cover_every_category_and_tier():
    rows = [json.loads(x) for x in SAMPLES["sample"].read_text().splitlines()]
    assert all(set(r) == set(FIELDS) for r in rows)
    counts = {c: sum(r["category"] == c for r in rows) for c in CATEGORIES}
    assert min(counts.values()) >= 2 and len({r["category"] for r in rows}) == len(CATEGORIES)
    assert {r.category for r in load_requests("sample_throughput")} == set(ENTROPY_TIERS)
    multi = [r for r in load_requests("sample", turns="all") if len(r.turns) > 1]
    assert multi and all(len(r.turns) == 1 for r in load_requests("sample"))
    only = load_requests("sample_throughput", categories=["mixed"])
    assert only and {r.category for r in only} == {"mixed"}
    assert len(load_requests("sample", num_requests=3)) == 3


def _write(tmp_path: Path, lines: list[str]) -> str:
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_placeholder_rows_refused_with_rebuild_hint(tmp_path):
    bad = ROW | {"question_id": "q7", "turns": [f"{PLACEHOLDER}\n\nrole: {{x}}"]}
    path = _write(tmp_path, [json.dumps(ROW), json.dumps(bad)])
    with pytest.raises(DatasetError, match=r"data.jsonl:2.*turns\[0\].*q7.*prepare_data.py"):
        load_requests(path)


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("{not json", r"data.jsonl:2: not valid JSON"),
        (json.dumps({k: v for k, v in ROW.items() if k != "category"}), r":2: missing.*category"),
        (json.dumps(ROW | {"turns": "hi"}), r":2: field 'turns'"),
        (json.dumps(ROW | {"turns": []}), r":2: field 'turns'"),
        (json.dumps([1, 2]), r":2: a row must be a JSON object"),
    ],
)
def test_malformed_files_refused(tmp_path, line, match):
    with pytest.raises(DatasetError, match=match):
        load_requests(_write(tmp_path, [json.dumps(ROW), line]))


def test_bad_sources_refused(tmp_path, monkeypatch):
    with pytest.raises(DatasetError, match="no such file"):
        load_requests(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DatasetError, match=r"\['nope'\] not in"):
        load_requests("sample", categories=["nope"])
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)  # never touch the network
    with pytest.raises(DatasetError, match="needs the `datasets` package"):
        load_requests("qualitative")
    pq = tmp_path / "test.parquet"
    pq.write_bytes(b"PAR1")
    for mod in ("pyarrow", "pyarrow.parquet", "pandas"):
        monkeypatch.setitem(__import__("sys").modules, mod, None)
    with pytest.raises(DatasetError, match="install pyarrow, or convert the file to JSONL"):
        load_requests(str(pq))


def _result(qid: str, cat: str, steps: list[list[int]]) -> RequestResult:
    turns = [
        TurnResult(num_tokens=sum(s) + 1, accept_lengths=s, start=0.0, end=2.0, ttft=0.5)
        for s in steps
    ]
    return RequestResult(Request(qid, cat, ["t"] * len(steps)), turns)


def test_metrics_follow_the_reference_formulas():
    res = [_result("a", "math", [[3, 1, 2, 9]]), _result("b", "math", [[1, 2], [3, 3, 7]]),
           _result("c", "qa", [[2]])]  # fmt: skip
    out = specbench(res)  # the last step of each turn is dropped when there are more
    assert out["Request_AL"] == {"a": 2.0, "b": 7 / 3, "c": 2.0}
    assert out["Category_AL"] == {"math": (2.0 + 7 / 3) / 2, "qa": 2.0}
    assert out["Average_AL"] == pytest.approx((2.0 + 7 / 3 + 2.0) / 3)
    assert out["Acceptance_Length_Histogram"] == {1: 2, 2: 2, 3: 3}
    cond, joint = out["Conditional_Acceptance_Rate"], out["Joint_Acceptance_Rate"]
    assert cond == pytest.approx({1: 1.0, 2: 5 / 7, 3: 3 / 5})
    assert joint == pytest.approx({1: 1.0, 2: 5 / 7, 3: 3 / 7})
    s = statistics([1.0, 2.0, 3.0, 4.0])
    assert s == {"min": "1.0000", "max": "4.0000", "mean": "2.5000", "std": "1.1180",
                 "quantiles": {"0.25": "1.7500", "0.5": "2.5000", "0.75": "3.2500"}}  # fmt: skip
    t = timing(res, num_gpus=2)
    assert t["Output TPS"] == pytest.approx((16 + 4 + 14 + 3) / 2.0)
    assert t["Output TPS/gpu"] == pytest.approx(t["Output TPS"] / 2)
    assert set(t) >= {"TTFT Time", "E2E Request Time"} and t["TTFT Time"]["mean"] == "0.5000"


def _check_run_files(out: Path, modes: list[str], concs: list[int]) -> dict:
    for mode in modes:
        for c in concs:
            (spec,) = json.loads((out / mode / f"c{c}" / "specbench.json").read_text())
            assert set(spec) == {"Request_AL", "Category_AL", "Average_AL",
                                 "Acceptance_Length_Histogram", "Conditional_Acceptance_Rate",
                                 "Joint_Acceptance_Rate"}  # fmt: skip
            (tim,) = json.loads((out / mode / f"c{c}" / "timing.json").read_text())
            assert {"Output TPS", "Output TPS/gpu", "TTFT Time", "E2E Request Time"} <= set(tim)
            assert set(tim["E2E Request Time"]) == {"min", "max", "mean", "std", "quantiles"}
    assert (out / "results.md").read_text().startswith("| mode |")
    for png in ("al_per_category.png", "tps_vs_concurrency.png"):  # matplotlib: requirements/bench
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    return json.loads((out / "results.json").read_text())


def test_engine_every_mode_on_random_checkpoint(tiny, tmp_path):
    argv = ["--model", str(tiny), "--mode", ",".join(MODES), "--concurrency", "1,2",
            "--num-requests", "2", "--max-new-tokens", "4", "--block-size", "4",
            "--no-progress", "--out", str(tmp_path)]  # fmt: skip
    res = main(argv)
    saved = _check_run_files(tmp_path, MODES, [1, 2])
    assert saved["greedy_mismatches"] == {} == res["greedy_mismatches"]
    runs = {(r["mode"], r["concurrency"]): r for r in saved["runs"]}
    assert len(runs) == 8
    for r in runs.values():
        assert r["forwards"] > 0 and r["al"] >= 1.0
        assert r["tpf"] == pytest.approx((r["output_tokens"] - r["requests"]) / r["forwards"])
    for row in runs[("ar", 2)]["per_request"]:  # AR: one forward per token after the prefill
        assert row["forwards"] == row["output_tokens"] - 1 and row["e2e_s"] > 0
    assert runs[("ar", 1)]["tpf"] == 1.0 and runs[("ar", 1)]["ttft_s"]["mean"] > 0
    checks = saved["agreement_with_ar"]
    assert checks["self_spec_linear@2"]["exact_match"] == 2 and "diffusion@1" in checks


@pytest.mark.skipif(
    load_tokenizer(default_model_path()) is None,
    reason="the trained default model (sglang_trimode/assets/default_model) is missing",
)
def test_engine_every_mode_on_trained_default_model(tmp_path):
    argv = ["--mode", ",".join(MODES), "--categories", "coding", "--num-requests", "1",
            "--max-new-tokens", "32", "--no-ttft", "--no-progress",
            "--out", str(tmp_path)]  # fmt: skip
    assert main(argv)["greedy_mismatches"] == {}
    saved = _check_run_files(tmp_path, MODES, [1])
    runs = {r["mode"]: r for r in saved["runs"]}
    assert runs["self_spec_linear"]["al"] > 1.0 and runs["self_spec_quadratic"]["al"] > 1.0


def test_http_clients_protocol_against_engine_backed_server(tiny, tmp_path):
    """PROTOCOL test (our engine behind OpenAI/native endpoints), not a real SGLang server."""
    from bench.speed_bench.protocol_server import ProtocolServer
    from bench.speed_bench.tokenize import ByteTokenizer, encode
    from sglang_trimode.reference.engine import TriModeEngine

    engine, tok = TriModeEngine.from_pretrained(tiny), ByteTokenizer(128)
    common = ["--mode", "ar,self_spec_linear", "--concurrency", "2", "--num-requests", "2",
              "--max-new-tokens", "4", "--no-progress",
              "--extra-body", '{"trimode_mode": "{mode}"}']  # fmt: skip
    with ProtocolServer(engine, tok, block_size=4) as srv:
        native = main(["--backend", "native", "--url", srv.url, *common, "--out", str(tmp_path)])
        openai = main(["--backend", "openai", "--url", srv.url, *common,
                       "--out", str(tmp_path / "oa")])  # fmt: skip
        chat = main(["--backend", "openai-chat", "--url", srv.url, "--mode", "ar",
                     "--num-requests", "1", "--max-new-tokens", "3", "--no-progress",
                     "--out", str(tmp_path / "chat")])  # fmt: skip
    _check_run_files(tmp_path, ["ar", "self_spec_linear"], [2])
    (want,) = engine.generate(
        [encode(tok, load_requests("sample")[0].turns[0])],
        mode="self_spec_linear", max_new_tokens=4, block_size=4,
    )  # fmt: skip
    spec = {r["mode"]: r for r in native["runs"]}["self_spec_linear"]["per_request"][0]
    assert spec["forwards"] == want.stats.forwards and spec["output_tokens"] == len(want.token_ids)
    assert native["greedy_mismatches"] == {} and native["ttft_method"] == "first streamed chunk"
    for res in (openai, chat):  # no meta_info over OpenAI: stats unavailable, never invented
        for run in res["runs"]:
            assert run["forwards"] is None and run["tpf"] is None and run["al"] is None
            assert run["output_tokens"] > 0 and run["ttft_s"]["mean"] > 0
    (spec_oa,) = json.loads((tmp_path / "oa/ar/c2/specbench.json").read_text())
    assert spec_oa["Average_AL"] is None and spec_oa["Request_AL"] == {}


def test_trimode_server_bodies_carry_the_mode_where_sglang_reads_it():
    from bench.speed_bench.backends.http import HttpBackend

    gen = GenConfig(max_new_tokens=5, ignore_eos=True)
    extra = {"sampling_params": {"top_k": 1}, "rid": "{mode}"}
    native = HttpBackend("native", "h:1", gen, extra_body=extra, trimode=True)
    body = native._body(["q"], [], "diffusion")
    assert body["sampling_params"] == {"max_new_tokens": 5, "temperature": 0.0, "top_k": 1,
                                       "ignore_eos": True,
                                       "custom_params": {"trimode_mode": "diffusion"}}  # fmt: skip
    assert body["rid"] == "diffusion" and body["text"] == "q" and "custom_params" not in body
    openai = HttpBackend("openai", "h:1", gen, trimode=True)._body(["q"], [], "ar")
    assert openai["custom_params"] == {"trimode_mode": "ar"} and openai["ignore_eos"] is True
    plain = HttpBackend("openai-chat", "h:1", GenConfig())._body(["q", "r"], ["a"], "ar")
    assert "custom_params" not in plain and "ignore_eos" not in plain
    assert [m["role"] for m in plain["messages"]] == ["user", "assistant", "user"]
    with pytest.raises(SystemExit, match="--trimode-block-size"):
        main(["--backend", "native", "--block-size", "4", "--no-progress"])


def test_unavailable_backends_fail_clearly():
    from bench.speed_bench.backends.http import HttpBackend

    client = HttpBackend("native", "http://127.0.0.1:9", GenConfig(), timeout=2)
    with pytest.raises(BackendUnavailable, match="127.0.0.1:9/generate"):
        client.run(load_requests("sample", num_requests=1), "ar", 1, lambda n: None)
    try:
        import sglang  # noqa: F401
    except ImportError:
        from bench.speed_bench.backends.sglang_engine import SGLangEngineBackend

        with pytest.raises(BackendUnavailable, match="sglang, which is not importable"):
            SGLangEngineBackend("m", GenConfig())
