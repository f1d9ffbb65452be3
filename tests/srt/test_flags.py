"""The `--trimode-*` flags and `--speculative-algorithm TRIMODE`, through the installed entry point.

Every check runs in a fresh subprocess, so SGLang loads the plugin through the
`sglang.srt.plugins` entry point exactly as `python -m sglang.launch_server` does: the flags are
listed by `--help`, parse onto the ServerArgs record (and survive the pickling into scheduler
processes), `TRIMODE` resolves to our worker class and the checkpoint's architecture to our model
class, and bad values fail with a message naming the flag. Skipped without sglang.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from _deps import require

require(
    "sglang", reason="sglang is not installed (bash scripts/setup_sglang.sh installs it for CPU)"
)

from sglang_trimode import default_model_path  # noqa: E402
from sglang_trimode.srt import flags  # noqa: E402
from sglang_trimode.srt.cpu_platform import PYTHONPATH_ENTRY  # noqa: E402


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["SGLANG_USE_CPU_ENGINE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PYTHONPATH_ENTRY, env.get("PYTHONPATH")) if p)
    return env


def _run(args: list[str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300
    )


def test_flags_module_is_consistent():
    assert flags.MODES == (*flags.REQUEST_MODES, "auto")
    assert [f.name for f in flags.FLAGS] == [
        "--trimode-mode",
        "--trimode-block-size",
        "--trimode-threshold",
        "--trimode-serve-modes",
        "--trimode-cost-file",
        "--trimode-auto-token-budget",
        "--trimode-attention-impl",
        "--trimode-fill-in",
        "--trimode-pad-forwards",
        "--trimode-drafter",
        "--trimode-drafter-rows",
        "--trimode-bonus-candidates",
        "--trimode-bonus-lengths",
    ]
    assert flags.parse_trimode_args(["--x", "1", "--trimode-mode", "ar"])["trimode_mode"] == "ar"
    s = flags.resolve({"trimode_block_size": 4}, model_block_size=32)
    assert (s.mode, s.block_size, s.threshold) == (flags.DEFAULT_MODE, 4, flags.DEFAULT_THRESHOLD)
    assert s.fill_in is True  # on unless --trimode-fill-in off
    assert flags.resolve({"trimode_fill_in": "on"}, 4).fill_in is True
    assert flags.resolve({"trimode_fill_in": "off"}, 4).fill_in is False
    assert s.pad_forwards is False  # off unless --trimode-pad-forwards on
    assert flags.resolve({"trimode_pad_forwards": "on"}, 4).pad_forwards is True
    assert flags.resolve({"trimode_pad_forwards": "off"}, 4).pad_forwards is False
    assert s.bonus_candidates == 0
    assert flags.resolve({"trimode_bonus_candidates": 3}, 4).bonus_candidates == 3
    assert s.bonus_lengths == 0
    assert flags.resolve({"trimode_bonus_lengths": 2}, 4).bonus_lengths == 2
    lengths_only = {"trimode_bonus_lengths": 2}
    assert "needs --trimode-bonus-candidates" in flags.check_combination(lengths_only, "TRIMODE")
    both = lengths_only | {"trimode_bonus_candidates": 3}
    assert flags.check_combination(both, "TRIMODE") is None
    assert s.drafter == "on"  # the checkpoint's drafter adapter unless --trimode-drafter off
    assert flags.resolve({"trimode_drafter": "off"}, 4).drafter == "off"
    assert s.drafter_rows == "self_spec"
    assert flags.resolve({"trimode_drafter_rows": "vendor"}, 4).drafter_rows == "vendor"
    assert flags.check_combination({"trimode_mode": "diffusion"}, None)
    assert flags.check_combination({"trimode_mode": "ar"}, None) is None
    assert flags.check_combination({"trimode_mode": "diffusion"}, "trimode") is None
    # auto: a request mode and a serve mode like the others (served by default)
    assert flags.check_request_mode("auto", flags.served_modes({}, "TRIMODE")) is None
    assert "not served" in flags.check_request_mode("auto", ("ar", "self_spec_linear"))
    assert "not served" in flags.check_request_mode("auto", flags.served_modes({}, None))
    assert flags.mode_list("ar,auto") == ("ar", "auto")
    assert "not among" in flags.check_combination(
        {"trimode_mode": "auto", "trimode_serve_modes": ("ar",)}, "TRIMODE"
    )


def test_trimode_args_record_is_typed_and_round_trips():
    """The record on `ServerArgs`: one field per flag, `{dest: value}` both ways, picklable."""
    import dataclasses
    import pickle

    names = [f.name for f in dataclasses.fields(flags.TriModeArgs)]
    assert [flags.PREFIX + n for n in names] == list(flags.DESTS)
    argv = ["--trimode-mode", "auto", "--trimode-serve-modes", "ar,auto"]
    values = flags.parse_trimode_args(argv)
    record = flags.TriModeArgs.from_values(values)
    assert (record.mode, record.serve_modes, record.block_size) == ("auto", ("ar", "auto"), None)
    assert record.values() == values
    assert pickle.loads(pickle.dumps(record)) == record
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.mode = "ar"


def test_auto_token_budget_flag():
    parsed = flags.parse_trimode_args(["--trimode-auto-token-budget", "12"])
    assert parsed["trimode_auto_token_budget"] == 12
    assert flags.resolve(parsed, 4).auto_token_budget == 12
    assert flags.resolve({}, 4).auto_token_budget is None  # no cap
    for bad in ("0", "-3", "many"):
        with pytest.raises(SystemExit):
            flags.parse_trimode_args(["--trimode-auto-token-budget", bad])
    assert flags.check_combination(parsed, "TRIMODE") is None  # auto served by default
    assert "need --speculative-algorithm" in (flags.check_combination(parsed, None) or "")
    no_auto = parsed | {"trimode_serve_modes": ("ar", "self_spec_linear")}
    assert "does not serve" in flags.check_combination(no_auto, "TRIMODE")
    only_auto = parsed | {"trimode_mode": "auto", "trimode_serve_modes": ("auto",)}
    assert flags.check_combination(only_auto, "TRIMODE") is None


def test_cost_file_flag_reads_a_calibration_file(tmp_path):
    from sglang_trimode.scheduler.cost import CostModel

    good, bad = tmp_path / "cost.json", tmp_path / "bad.json"
    CostModel(0.01, 1e-4, source="test").save(good)
    bad.write_text('{"fixed": 1}')
    assert flags.parse_trimode_args(["--trimode-cost-file", str(good)])["trimode_cost_file"] == (
        str(good)
    )
    assert flags.resolve({"trimode_cost_file": str(good)}, 4).cost_file == str(good)
    for path in (bad, tmp_path / "missing.json"):
        with pytest.raises(SystemExit):
            flags.parse_trimode_args(["--trimode-cost-file", str(path)])
    assert flags.check_combination({"trimode_cost_file": str(good)}, None)  # needs TRIMODE


def test_launch_server_help_lists_flags(tmp_path):
    res = _run(["-m", "sglang.launch_server", "--help"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert flags.GROUP_TITLE in res.stdout
    for flag in flags.FLAGS:
        assert flag.name in res.stdout
    assert "{ar,diffusion,self_spec_linear,self_spec_quadratic,auto}" in res.stdout


_PROBE = r"""
import contextlib, io, json, pickle, sys
from sglang.srt.plugins import load_plugins
load_plugins()
from sglang.srt.server_args import prepare_server_args
from sglang.srt.arg_groups.overrides import resolving_view
from sglang.srt.models.registry import ModelRegistry
from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

model = sys.argv[1]
base = ["--model-path", model, "--device", "cpu"]
out = {}

sa = prepare_server_args(base + ["--speculative-algorithm", "TRIMODE", "--trimode-mode",
                                 "diffusion", "--trimode-block-size", "8",
                                 "--trimode-threshold", "0.5", "--trimode-fill-in", "off"])
out["values"] = pickle.loads(pickle.dumps(sa)).trimode_args.values()
sa.resolve_once()
cfg = resolving_view(sa)
out["num_draft_tokens"] = cfg.speculative_num_draft_tokens
out["overlap_disabled"] = cfg.disable_overlap_schedule
algo = SpeculativeAlgorithm.from_string("trimode")
worker = algo.create_worker(sa)
out["worker"] = worker.__module__ + "." + worker.__qualname__
cls, arch = ModelRegistry.resolve_model_cls(["NemotronLabsDiffusionModel"])
out["model"] = cls.__module__ + "." + cls.__qualname__
out["plain_ar"] = prepare_server_args(base).trimode_args.values()

errors = {}
for name, extra in {
    "bad_mode": ["--speculative-algorithm", "TRIMODE", "--trimode-mode", "fast"],
    "block_0": ["--speculative-algorithm", "TRIMODE", "--trimode-block-size", "0"],
    "threshold_2": ["--speculative-algorithm", "TRIMODE", "--trimode-threshold", "2"],
    "bad_serve": ["--speculative-algorithm", "TRIMODE", "--trimode-serve-modes", "ar,turbo"],
    "bad_impl": ["--speculative-algorithm", "TRIMODE", "--trimode-attention-impl", "flash"],
    "bad_fill_in": ["--speculative-algorithm", "TRIMODE", "--trimode-fill-in", "yes"],
    "bad_drafter": ["--speculative-algorithm", "TRIMODE", "--trimode-drafter", "lora"],
    "bad_drafter_rows": ["--speculative-algorithm", "TRIMODE", "--trimode-drafter-rows", "some"],
    "bad_bonus": ["--speculative-algorithm", "TRIMODE", "--trimode-bonus-candidates", "65"],
    "bad_lengths": ["--speculative-algorithm", "TRIMODE", "--trimode-bonus-lengths", "-1"],
    "lengths_alone": ["--speculative-algorithm", "TRIMODE", "--trimode-bonus-lengths", "2"],
    "no_algo": ["--trimode-mode", "diffusion"],
    "mode_not_served": ["--speculative-algorithm", "TRIMODE", "--trimode-mode", "diffusion",
                        "--trimode-serve-modes", "ar"],
}.items():
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            prepare_server_args(base + extra)
        errors[name] = None
    except SystemExit as e:
        errors[name] = [e.code, err.getvalue().strip().splitlines()[-1]]
out["errors"] = errors
try:
    prepare_server_args(base + ["--speculative-algorithm", "TRIMODE",
                                "--enable-return-hidden-states"]).resolve_once()
    out["hidden_states"] = None
except ValueError as e:
    out["hidden_states"] = str(e)
print("RESULT " + json.dumps(out))
"""


def test_entry_point_parses_resolves_and_rejects(tmp_path):
    res = _run(["-c", _PROBE, str(default_model_path())], tmp_path)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    assert res.returncode == 0 and lines, f"rc={res.returncode}\n{res.stderr[-3000:]}"
    got = json.loads(lines[-1][len("RESULT ") :])
    assert got["values"] == {
        "trimode_mode": "diffusion",
        "trimode_block_size": 8,
        "trimode_threshold": 0.5,
        "trimode_serve_modes": None,
        "trimode_cost_file": None,
        "trimode_auto_token_budget": None,
        "trimode_attention_impl": None,
        "trimode_fill_in": "off",
        "trimode_pad_forwards": None,
        "trimode_drafter": None,
        "trimode_drafter_rows": None,
        "trimode_bonus_candidates": None,
        "trimode_bonus_lengths": None,
    }
    assert got["plain_ar"] == dict.fromkeys(flags.DESTS)
    assert got["overlap_disabled"] is True
    assert got["num_draft_tokens"] == 8  # B: fill-in off
    assert got["worker"] == "sglang_trimode.srt.worker.TriModeWorker"
    assert got["model"] == "sglang_trimode.srt.model.NemotronLabsDiffusionModel"
    errors = got["errors"]
    assert all(v is not None and v[0] == 2 for v in errors.values()), errors
    assert "--trimode-mode: invalid choice: 'fast'" in errors["bad_mode"][1]
    assert "--trimode-block-size: must be a positive integer" in errors["block_0"][1]
    assert "--trimode-threshold: must be in (0, 1]" in errors["threshold_2"][1]
    assert "unknown: turbo" in errors["bad_serve"][1]
    assert "--trimode-attention-impl: invalid choice: 'flash'" in errors["bad_impl"][1]
    assert "--trimode-fill-in: invalid choice: 'yes'" in errors["bad_fill_in"][1]
    assert "--trimode-drafter: expected on, off or an adapter folder" in errors["bad_drafter"][1]
    assert "--trimode-drafter-rows: invalid choice: 'some'" in errors["bad_drafter_rows"][1]
    assert "--trimode-bonus-candidates: must be in [0, 64]" in errors["bad_bonus"][1]
    assert "--trimode-bonus-lengths: must be >= 0" in errors["bad_lengths"][1]
    assert (
        "--trimode-bonus-lengths needs --trimode-bonus-candidates > 0"
        in (errors["lengths_alone"][1])
    )
    assert "need --speculative-algorithm TRIMODE" in errors["no_algo"][1]
    assert "not among --trimode-serve-modes" in errors["mode_not_served"][1]
    assert "--enable-return-hidden-states" in got["hidden_states"]
    assert "returns no hidden states" in got["hidden_states"]


def test_sampling_messages_and_what_the_worker_reads_of_a_logprob_request():
    """The 400 texts of the tokenizer-manager hook (sampling fields the worker does not apply,
    hidden states), and the logprob settings the worker reads from a request: its top-k count
    and its chosen ids (`token_ids_logprob`), nothing without `return_logprob`."""
    from types import SimpleNamespace

    from sglang_trimode.srt.logprobs import chosen_ids, top_logprobs_num

    assert flags.unsupported_sampling_error(None) is None
    defaults = {"temperature": 0.0, "min_p": 0.0, "frequency_penalty": 0.0, "presence_penalty":
                0.0, "repetition_penalty": 1.0, "min_new_tokens": 0, "logit_bias": {},
                "regex": None, "json_schema": None, "beam_width": None}  # fmt: skip
    assert flags.unsupported_sampling_error(defaults) is None
    asked = {"regex": "a+", "frequency_penalty": 0.2, "min_p": 0.2, "logit_bias": {"5": 1.0}}
    msg = flags.unsupported_sampling_error(defaults | asked, "<proc>")
    assert msg.startswith("custom_logit_processor: not applied with")  # the rest is served
    grammars = {"regex": "a+", "json_schema": "{}", "ebnf": 'root ::= "a"', "structural_tag": "{}"}
    assert flags.unsupported_sampling_error(defaults | grammars) is None  # served (rows.grammar)
    assert flags.unsupported_sampling_error({"beam_width": 2}).startswith("beam_width: not")
    assert flags.unsupported_server_error(False, None) is None
    assert "--return-hidden-states-mode" in flags.unsupported_server_error(False, "last")

    def req(rid, return_logprob, top=0, ids=None):
        info = SimpleNamespace(top_logprobs_num=top, token_ids_logprob=ids)
        return SimpleNamespace(rid=rid, return_logprob=return_logprob, logprob=info)

    reqs = [
        req("a", False, 3, [1]),
        req("b", True, top=2),
        req("c", True),
        req("d", True, 0, [3, 1]),
    ]
    assert [top_logprobs_num(r) for r in reqs] == [0, 2, 0, 0]
    assert [chosen_ids(r) for r in reqs] == [(), (), (), (3, 1)]


_KEYWORDS_PROBE = """
import json, pickle, sys
from sglang.srt.server_args import resolving_view
from sglang_trimode.srt import plugin
from sglang_trimode.srt.offline import server_args

model = sys.argv[1]
out = {}
sa = server_args(model_path=model, device="cpu", speculative_algorithm="TRIMODE",
                 trimode_mode="diffusion", trimode_block_size=4, trimode_threshold=0.5,
                 trimode_serve_modes=["ar", "diffusion", "self_spec_quadratic"])
out["values"] = pickle.loads(pickle.dumps(sa)).trimode_args.values()
out["served"] = list(plugin._served_modes)
out["log_level"] = sa.log_level
sa.resolve_once()
out["num_draft_tokens"] = resolving_view(sa).speculative_num_draft_tokens  # 2 * 4
errors = {}
for name, kw in {
    "bad_mode": dict(trimode_mode="fast"),
    "block_0": dict(trimode_block_size=0),
    "block_float": dict(trimode_block_size=2.5),
    "threshold_2": dict(trimode_threshold=2),
    "bad_serve": dict(trimode_serve_modes=["ar", "turbo"]),
    "bad_fill_in": dict(trimode_fill_in="yes"),
    "bad_drafter": dict(trimode_drafter="no"),
    "bad_bonus": dict(trimode_bonus_candidates="two"),
    "lengths_alone": dict(trimode_bonus_lengths=1),
    "no_algo": dict(speculative_algorithm=None, trimode_mode="diffusion"),
    "mode_not_served": dict(trimode_mode="diffusion", trimode_serve_modes="ar"),
    "unknown": dict(trimode_turbo=1),
}.items():
    kw = {"speculative_algorithm": "TRIMODE", **kw}
    try:
        server_args(model_path=model, device="cpu", **kw)
        errors[name] = None
    except (ValueError, TypeError) as e:
        errors[name] = str(e)
out["errors"] = errors
print("RESULT " + json.dumps(out))
"""


def test_offline_server_args_take_the_flags_as_keywords(tmp_path):
    """`sglang_trimode.srt.offline.server_args(...)`: the record `sglang.Engine(server_args=...)`
    takes, with the flags as keywords (`trimode_block_size=4`): parsed as the command line parses
    them, kept through pickling, resolved by TRIMODE (verify width from the keyword block size),
    bad values a ValueError naming the keyword."""
    res = _run(["-c", _KEYWORDS_PROBE, str(default_model_path())], tmp_path)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    assert res.returncode == 0 and lines, f"rc={res.returncode}\n{res.stderr[-3000:]}"
    got = json.loads(lines[-1][len("RESULT ") :])
    assert got["values"] == dict.fromkeys(flags.DESTS) | {
        "trimode_mode": "diffusion",
        "trimode_block_size": 4,
        "trimode_threshold": 0.5,
        "trimode_serve_modes": ["ar", "diffusion", "self_spec_quadratic"],  # a tuple, via JSON
    }
    assert got["served"] == ["ar", "diffusion", "self_spec_quadratic"]
    assert got["log_level"] == "error"  # as sglang.Engine(**kwargs) defaults it
    assert got["num_draft_tokens"] == 8  # 2 B: a step's tokens per request with fill-in
    errors = got["errors"]
    assert "trimode_mode='fast': invalid choice: 'fast' (choose from 'ar'" in errors["bad_mode"]
    assert "trimode_block_size=0: must be a positive integer" in errors["block_0"]
    assert "trimode_block_size=2.5: expected a positive integer" in errors["block_float"]
    assert "trimode_threshold=2: must be in (0, 1]" in errors["threshold_2"]
    assert "unknown: turbo" in errors["bad_serve"]
    assert "trimode_fill_in='yes': invalid choice: 'yes'" in errors["bad_fill_in"]
    assert "trimode_drafter='no': expected on, off or an adapter folder" in errors["bad_drafter"]
    assert "trimode_bonus_candidates='two': expected an integer" in errors["bad_bonus"]
    assert "trimode_bonus_lengths needs trimode_bonus_candidates > 0" in errors["lengths_alone"]
    assert "trimode_mode need speculative_algorithm=TRIMODE" in errors["no_algo"]
    assert "trimode_mode diffusion is not among trimode_serve_modes ar" in errors["mode_not_served"]
    assert "trimode_turbo" in errors["unknown"]


_DRAFTER_PROBE = r"""
import json, sys
from sglang.srt.plugins import load_plugins
load_plugins()
from sglang.srt.server_args import prepare_server_args

out = {}
for name, argv in json.loads(sys.argv[1]).items():
    try:
        prepare_server_args(argv + ["--device", "cpu"]).resolve_once()
        out[name] = None
    except (ValueError, OSError) as e:
        out[name] = str(e)
print("RESULT " + json.dumps(out))
"""


def test_launch_stops_on_a_malformed_drafter_adapter(tmp_path):
    """The launching process checks the adapter `--trimode-drafter` picks against the
    checkpoint's config.json before any worker starts: a malformed one (rank of the tensors vs
    the config's r, target module, missing file) stop the launch with the file and the field
    named; `--trimode-drafter off` or a good adapter start, at TP 2 too (each rank shards it)."""
    import shutil

    from sglang_trimode.adapter.files import ADAPTER_CONFIG, ADAPTER_WEIGHTS, VENDOR_DIR
    from sglang_trimode.adapter.lora import DrafterConfig, DrafterLoRA
    from sglang_trimode.reference.engine import TriModeEngine

    def checkpoint(name: str, **conf) -> str:
        path = tmp_path / name
        shutil.copytree(default_model_path(), path)
        model = TriModeEngine.from_pretrained(path, drafter=False).model
        folder = DrafterLoRA.for_model(model, DrafterConfig(4, 8.0)).save(path)
        cfg = json.loads((folder / ADAPTER_CONFIG).read_text()) | conf
        (folder / ADAPTER_CONFIG).write_text(json.dumps(cfg))
        return str(path)

    good, bad_rank = checkpoint("good"), checkpoint("rank", r=8)
    wrong_target = checkpoint("target", target_modules=["q_proj"])
    missing = checkpoint("missing")
    (tmp_path / "missing" / VENDOR_DIR / ADAPTER_WEIGHTS).unlink()
    algo = ["--speculative-algorithm", "TRIMODE"]
    cases = {
        "good": ["--model-path", good, *algo],
        "rank": ["--model-path", bad_rank, *algo],
        "target": ["--model-path", wrong_target, *algo],
        "missing": ["--model-path", missing, *algo],
        "path": ["--model-path", good, *algo, "--trimode-drafter", f"{bad_rank}/{VENDOR_DIR}"],
        "off": ["--model-path", bad_rank, *algo, "--trimode-drafter", "off"],
        "tp2": ["--model-path", good, *algo, "--tp-size", "2"],
    }
    res = _run(["-c", _DRAFTER_PROBE, json.dumps(cases)], tmp_path)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    assert res.returncode == 0 and lines, f"rc={res.returncode}\n{res.stderr[-3000:]}"
    got = json.loads(lines[-1][len("RESULT ") :])
    assert got["good"] is None and got["off"] is None and got["tp2"] is None, got
    rank = f"{bad_rank}/{VENDOR_DIR}/{ADAPTER_WEIGHTS}: base_model.model.encoder.layers.0."
    assert got["rank"].startswith(rank) and "(field r = 8 in adapter_config.json" in got["rank"]
    assert got["path"] == got["rank"]
    assert f"{VENDOR_DIR}/{ADAPTER_CONFIG}: target_modules must name 'o_proj'" in got["target"]
    assert f"{VENDOR_DIR}/{ADAPTER_WEIGHTS}: missing" in got["missing"]
