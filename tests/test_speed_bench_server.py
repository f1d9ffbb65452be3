"""SPEED-Bench CLI against a real `python -m sglang.launch_server` on a CPU (issue 3, must-show 2).

One server for the module: the tiny default model with the plugin, `--speculative-algorithm
TRIMODE --trimode-block-size 4`, serving every request mode (the default `--trimode-serve-modes`).
`bench.speed_bench.main` runs in-process with `--backend native` and `--backend openai`,
`--trimode-server` (each request asks for its mode), every mode, concurrency 1 and 4, greedy,
`--ignore-eos` (fixed lengths). Checked: the files of every run; the CLI's own check that greedy
self-speculation equals AR; every output equal to the reference engine's (`--backend engine`, same
prompts and flags): token ids over the native API, text over OpenAI; per-request stats.

Stats over the native API come from `meta_info`: the plugin's `trimode_forwards` and
`trimode_accept_lengths` must give the reference engine's forwards, per-step acceptance lengths,
TPF and AL, request by request. The OpenAI APIs send no `meta_info`: there the stats must be
reported unavailable, never estimated. Concurrency 4 must batch the requests on the server (its
decode-step log shows all of them running), checked without any wall-time threshold.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from _deps import require

require(
    "sglang", reason="sglang is not installed (bash scripts/setup_sglang.sh installs it for CPU)"
)

pytestmark = pytest.mark.server  # a real SGLang server (or engine) on the CPU: minutes

sys.path.insert(0, str(Path(__file__).parent / "srt"))
from _srt_server import trimode_server  # noqa: E402
from test_speed_bench import _check_run_files  # noqa: E402

from bench.speed_bench.cli import main  # noqa: E402
from sglang_trimode.srt.flags import REQUEST_MODES  # noqa: E402

MODES = list(REQUEST_MODES)  # what the server offers: --trimode-serve-modes defaults to all
BLOCK, MAX_NEW, REQUESTS, CONCS = 4, 12, 4, [1, 4]
COMMON = ["--dataset", "sample", "--num-requests", str(REQUESTS), "--max-new-tokens", str(MAX_NEW),
          "--ignore-eos", "--mode", ",".join(MODES), "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # every decode step logged: test_concurrency_4_batches_requests_on_the_server reads it
    extra = ["--decode-log-interval", "1"]
    with trimode_server(tmp_path_factory, "speed_bench_server", BLOCK, extra) as srv:
        yield srv


@pytest.fixture(scope="module")
def runs(server, tmp_path_factory) -> dict[str, tuple[dict, Path]]:
    """backend -> (main's result, out dir); the engine backend is the reference."""
    out: dict[str, tuple[dict, Path]] = {}
    base = tmp_path_factory.mktemp("runs")
    argv = [*COMMON, "--backend", "engine", "--block-size", str(BLOCK), "--concurrency", "4",
            "--no-ttft", "--out", str(base / "engine")]  # fmt: skip
    out["engine"] = main(argv), base / "engine"
    for backend in ("native", "openai"):
        argv = [*COMMON, "--backend", backend, "--url", server["base"], "--trimode-server",
                "--concurrency", ",".join(map(str, CONCS)),
                "--out", str(base / backend)]  # fmt: skip
        out[backend] = main(argv), base / backend
    return out


def responses(out: Path, mode: str, conc: int) -> dict[str, dict]:
    lines = (out / mode / f"c{conc}" / "specbench_responses.jsonl").read_text().splitlines()
    return {r["question_id"]: r for r in map(json.loads, lines)}


def per_request(res: dict, mode: str, conc: int) -> dict[str, dict]:
    (run,) = [r for r in res["runs"] if r["mode"] == mode and r["concurrency"] == conc]
    return {row["question_id"]: row for row in run["per_request"]}


@pytest.mark.parametrize("backend", ["native", "openai"])
def test_files_of_every_mode_and_concurrency(runs, backend):
    res, out = runs[backend]
    saved = json.loads((out / "results.json").read_text())
    assert saved["backend"] == backend and saved["ttft_method"] == "first streamed chunk"
    assert {(r["mode"], r["concurrency"]) for r in saved["runs"]} == {
        (m, c) for m in MODES for c in CONCS
    }
    assert _check_run_files(out, MODES, CONCS) == saved
    for mode in MODES:
        for c in CONCS:
            (tim,) = json.loads((out / mode / f"c{c}" / "timing.json").read_text())
            assert tim["Output TPS"] > 0 and float(tim["TTFT Time"]["mean"]) > 0
            assert float(tim["E2E Request Time"]["min"]) > 0
            assert len(responses(out, mode, c)) == REQUESTS
    for run in saved["runs"]:
        assert run["requests"] == REQUESTS and run["output_tokens"] == REQUESTS * MAX_NEW


@pytest.mark.parametrize("backend", ["native", "openai"])
def test_greedy_self_spec_equals_ar_by_the_cli_check(runs, backend):
    res, _ = runs[backend]
    assert res["greedy_mismatches"] == {}
    checks = res["agreement_with_ar"]
    assert set(checks) == {f"{m}@{c}" for m in MODES if m != "ar" for c in CONCS}
    for c in CONCS:
        for mode in ("self_spec_linear", "self_spec_quadratic"):
            assert checks[f"{mode}@{c}"]["exact_match"] == REQUESTS, (mode, c)
        assert 0.0 <= checks[f"diffusion@{c}"]["token_agreement"] <= 1.0


@pytest.mark.parametrize("mode", MODES)
def test_outputs_equal_reference_engine(runs, mode):
    want = responses(runs["engine"][1], mode, 4)
    assert all(len(r["output_ids"][0]) == MAX_NEW for r in want.values())
    for c in CONCS:
        native = responses(runs["native"][1], mode, c)
        assert {q: r["output_ids"] for q, r in native.items()} == {
            q: r["output_ids"] for q, r in want.items()
        }, (mode, c)
        openai = responses(runs["openai"][1], mode, c)
        assert {q: r["choices"] for q, r in openai.items()} == {
            q: r["choices"] for q, r in want.items()
        }, (mode, c)


@pytest.mark.parametrize("mode", MODES)
def test_per_request_stats_equal_reference_engine(runs, mode):
    want = per_request(runs["engine"][0], mode, 4)
    steps = {q: r["acceptance_lengths"] for q, r in responses(runs["engine"][1], mode, 4).items()}
    assert all(row["steps"] > 0 and row["forwards"] > 0 for row in want.values())
    for c in CONCS:
        got = per_request(runs["native"][0], mode, c)
        assert {q: r["output_tokens"] for q, r in got.items()} == {q: MAX_NEW for q in want}
        for key in ("steps", "forwards", "tpf", "al"):  # trimode_forwards / _accept_lengths
            assert {q: r[key] for q, r in got.items()} == {q: r[key] for q, r in want.items()}, (
                mode,
                c,
                key,
            )
        native = responses(runs["native"][1], mode, c)
        assert {q: r["acceptance_lengths"] for q, r in native.items()} == steps, (mode, c)
        for row in per_request(runs["openai"][0], mode, c).values():  # no meta_info over OpenAI
            assert row["output_tokens"] == MAX_NEW and row["steps"] is None
            assert row["forwards"] is None and row["al"] is None and row["ttft_s"] > 0


def test_concurrency_4_batches_requests_on_the_server(server, runs):
    """Concurrency 4 puts the 4 requests into one running batch of the TRIMODE worker.

    A logical check, not a timing one: with `--decode-log-interval 1` the scheduler logs every
    decode step's `#running-req`; the concurrency-1 runs never exceed 1, so a step with all
    REQUESTS running can only come from the concurrent runs."""
    text = Path(server["log"]).read_text(errors="replace")
    running = [int(m) for m in re.findall(r"#running-req: (\d+)", text)]
    assert running, "no decode-step log lines: was --decode-log-interval 1 dropped?"
    assert max(running) == REQUESTS, sorted(set(running))


def test_server_mix_bench_runs_mixed_mode_loads(server, tmp_path):
    """`bench/server_mix.py`: requests of several modes at once against the TRIMODE server; the
    JSON counts every token and each mode's forwards; a bad `--mix` is refused naming it."""
    from bench.server_mix import main as mix_main

    out = tmp_path / "mix.json"
    argv = ["--url", server["base"], "--mix", "ar:2,self_spec_quadratic:2", "--mix",
            "diffusion:1,self_spec_linear:1", "--max-new-tokens", "8", "--repeats", "1",
            "--out", str(out)]  # fmt: skip
    result = mix_main(argv)
    assert json.loads(out.read_text()) == result
    first, second = result["rows"]
    assert first["best"]["tokens"] == 4 * 8 and second["best"]["tokens"] == 2 * 8
    quad = first["best"]["per_mode"]["self_spec_quadratic"]
    ar = first["best"]["per_mode"]["ar"]
    assert quad["requests"] == ar["requests"] == 2
    assert ar["forwards"] == 2 * 7  # AR: one forward per token after the prefill's
    assert quad["forwards"] < ar["forwards"]  # the shipped model's drafts get accepted
    with pytest.raises(SystemExit):
        mix_main(["--url", server["base"], "--mix", "turbo:2"])
