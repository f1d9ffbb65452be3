"""Every launch command in examples/ and the deployment recipes parses with SGLang's own parser.

The commands are extracted from the files themselves (`launch_commands.py`: the shell runs them
with `python`/`sglang` shimmed), so a recipe cannot drift from what is tested. Each is parsed by
SGLang 0.5.23's `prepare_server_args` after `load_plugins()`, as `launch_server` does. On top:
recipe invariants (TP divides the 8 KV heads, both nodes of the multi-node recipe agree, routers
point at the replicas), every memory figure recomputed, the Kubernetes manifest parsed and its
container command one of the tested commands. Skipped without sglang.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

import pytest
from _deps import require

require(
    "sglang", reason="sglang is not installed (bash scripts/setup_sglang.sh installs it for CPU)"
)
import yaml  # noqa: E402

from sglang_trimode import default_model_path  # noqa: E402
from sglang_trimode.srt import flags  # noqa: E402
from sglang_trimode.srt.cpu_platform import PYTHONPATH_ENTRY  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import launch_commands as lc  # noqa: E402

sys.path.insert(0, str(lc.EXAMPLES / "deploy"))
import memory  # noqa: E402

DEPLOY = lc.EXAMPLES / "deploy"
RECIPES = sorted(DEPLOY.glob("*.md"))
K8S = DEPLOY / "kubernetes" / "trimode-8b.yaml"
HUB = re.compile(r"^nvidia/Nemotron-Labs-Diffusion-(3B|8B|14B)$")
GPU_GIB = 79.0  # an 80 GB card as CUDA reports it (H100 80GB: about 79.2 GiB)
VENDOR_DRAFTER_RANK = 128  # linear_spec_lora/ of the published checkpoints (docs/model.md)
#: Commands that must NOT parse: the harness has to be able to fail.
BAD = [
    ["--model-path", "m", "--tp-size", "eight"],
    ["--model-path", "m", "--trimode-mode", "diffusion"],  # needs --speculative-algorithm TRIMODE
    ["--model-path", "m", "--speculative-algorithm", "TRIMODE", "--trimode-mode", "fast"],
    ["--model-path", "m", "--speculative-algorithm", "TRIMODE", "--trimode-threshold", "1.5"],
]


def _parse_env() -> dict[str, str]:
    env = dict(os.environ)
    env["SGLANG_USE_CPU_ENGINE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PYTHONPATH_ENTRY, env.get("PYTHONPATH")) if p)
    return env


@pytest.fixture(scope="module")
def commands(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("launch")
    recs = []
    for md in sorted(lc.EXAMPLES.rglob("*.md")):
        recs += lc.extract_markdown(md, tmp)
    for device in ("cpu", "cuda"):
        for mode in flags.MODES:
            recs += lc.extract_script(lc.EXAMPLES / "serve.sh", [mode], tmp, {"DEVICE": device})
    servers = [r for r in recs if r["kind"] == "server"]
    readme = lc.extract_markdown(lc.ROOT / "README.md", tmp)  # not a sized recipe: kept apart
    parsed = lc.parse_commands([r["argv"] for r in servers + readme] + BAD, _parse_env())
    for rec, res in zip(servers + readme, parsed, strict=False):
        rec["parsed"] = res
    bad = parsed[len(servers) + len(readme) :]
    return {"all": recs, "servers": servers, "readme": readme, "bad": bad}


def test_readme_launch_lines_parse_as_a_gpu_and_a_cpu_trimode_server(commands):
    """README.md's "Serve" section: one GPU line (a published checkpoint, graphs off as the eager
    worker needs) and one CPU line (the shipped model, SGLang's CPU engine and the stand-in)."""
    gpu, cpu = commands["readme"]
    for rec in (gpu, cpu):
        assert rec["parsed"]["ok"], rec["parsed"].get("error")
        assert _is_trimode(rec["parsed"]["args"]), rec["argv"]
    g, c = gpu["parsed"]["args"], cpu["parsed"]["args"]
    assert HUB.match(g["model_path"]) and g["disable_cuda_graph"] and g["device"] != "cpu"
    assert c["device"] == "cpu" and c["disable_cuda_graph"]
    assert Path(lc.ROOT / c["model_path"]).resolve() == Path(default_model_path()).resolve()
    assert cpu["env"].get("SGLANG_USE_CPU_ENGINE") == "1"
    entry = cpu["env"]["PYTHONPATH"].split(os.pathsep)[0]
    assert (lc.ROOT / entry).resolve() == Path(PYTHONPATH_ENTRY).resolve()


def _from(commands, name: str) -> list[dict]:
    return [r for r in commands["all"] if r["source"].startswith(name)]


def test_commands_found_in_every_file(commands):
    for md in RECIPES:
        if md.name != "README.md":
            assert _from(commands, str(md.relative_to(lc.ROOT))), f"no launch command in {md}"
    assert len(_from(commands, "examples/serve.sh")) == 2 * len(flags.MODES)
    assert len(_from(commands, "examples/deploy/tensor_parallel.md")) == 4
    assert len(_from(commands, "examples/deploy/data_parallel_router.md")) == 8 + 2


def test_every_server_command_parses(commands):
    bad = [
        f"{r['source']}: {shlex.join(r['argv'])}\n{r['parsed'].get('error')}"
        for r in commands["servers"]
        if not r["parsed"]["ok"]
    ]
    assert not bad, "\n\n".join(bad)


def test_parser_rejects_bad_commands(commands):
    assert [r["ok"] for r in commands["bad"]] == [False] * len(BAD)
    assert "--trimode-mode" in commands["bad"][1]["error"]


def test_serve_script_modes(commands):
    for rec in _from(commands, "examples/serve.sh"):
        args, mode = rec["parsed"]["args"], rec["source"].split()[1]
        if mode == "ar":
            assert args["speculative_algorithm"] is None
        else:
            assert args["speculative_algorithm"] == "TRIMODE"
            assert args["trimode"] == {"trimode_mode": mode}
        cpu = "'cpu'" in rec["source"]
        assert (args["device"] == "cpu") == cpu
        # the TRIMODE worker runs eager on every device; plain AR keeps graphs except on a CPU
        assert args["disable_cuda_graph"] == (cpu or mode != "ar"), rec["source"]
        assert (rec["env"].get("SGLANG_USE_CPU_ENGINE") == "1") == cpu
        assert (PYTHONPATH_ENTRY in rec["env"].get("PYTHONPATH", "")) == cpu
        assert Path(args["model_path"]).is_dir()  # the tiny default model


def _hub_servers(commands) -> list[dict]:
    ok = [r for r in commands["servers"] if r["parsed"]["ok"]]
    out = [r for r in ok if HUB.match(r["parsed"]["args"]["model_path"])]
    assert len(out) >= 10
    return out


def _is_trimode(args: dict) -> bool:
    return args["speculative_algorithm"] == "TRIMODE"


def test_recipes_say_what_they_do_about_cuda_graphs(commands):
    """The TRIMODE worker runs every forward eager (it drops SGLang's captured graphs): each
    TRIMODE launch line passes --disable-cuda-graph; plain AR replicas keep SGLang's graphs.
    No TRIMODE line turns the LoRA drafter off: the worker shards it at TP > 1."""
    recs = _hub_servers(commands)
    assert any(_is_trimode(r["parsed"]["args"]) for r in recs)
    assert any(not _is_trimode(r["parsed"]["args"]) for r in recs)
    for rec in recs:
        a = rec["parsed"]["args"]
        assert a["disable_cuda_graph"] == _is_trimode(a), rec["source"]
        if _is_trimode(a):
            assert a["trimode"].get("trimode_drafter") != "off", rec["source"]
    k8s = (DEPLOY / "kubernetes" / "trimode-8b.yaml").read_text()
    assert "--disable-cuda-graph" in k8s and "CUDA graph capture" not in k8s


def _memory_args(a: dict) -> list[str]:
    """memory.py's arguments for a parsed launch line: the drafter (vendor rank) where the
    worker loads it (TRIMODE, not turned off; sharded at TP > 1), graphs as the line says."""
    size = HUB.match(a["model_path"]).group(1)
    drafter = _is_trimode(a) and a["trimode"].get("trimode_drafter") != "off"
    return [
        "--size", size, "--tp", str(a["tp_size"]), "--context", str(a["context_length"]),
        "--requests", str(a["max_running_requests"]), "--verify-width", str(a["verify_width"]),
        "--drafter-rank", str(VENDOR_DRAFTER_RANK if drafter else 0),
        "--cuda-graph", "off" if a["disable_cuda_graph"] else "on",
    ]  # fmt: skip


def test_memory_counts_the_drafter_and_the_eager_logits():
    base = ["--size", "8B", "--context", "1024", "--requests", "4", "--verify-width", "64"]
    plain = memory.main(base)
    with_lora = memory.main(base + ["--drafter-rank", str(VENDOR_DRAFTER_RANK)])
    total = re.compile(r"= ([\d.]+) GiB per GPU")
    lora_gib = memory.drafter_parameters("8B", VENDOR_DRAFTER_RANK) * memory.BYTES / memory.GIB
    assert lora_gib > 0.05 and "drafter" in with_lora and "drafter" not in plain
    grown = float(total.search(with_lora).group(1)) - float(total.search(plain).group(1))
    assert abs(grown - lora_gib) <= 0.1  # figures are rounded to 0.1 GiB
    assert "logits 0.25 GiB (4 x 64 rows)" in plain  # 4 x 64 x 131072 x 4 B x 2 = 0.25 GiB
    assert "not counted" in memory.main(base + ["--cuda-graph", "on"])
    # at TP 2 a GPU holds half of A's columns (4096 / 2) and all of B
    per_gpu = memory.drafter_parameters("8B", VENDOR_DRAFTER_RANK, tp=2)
    layers, hidden, _ = memory.SIZES["8B"]
    assert per_gpu == layers * VENDOR_DRAFTER_RANK * (2048 + hidden)
    assert f"drafter {per_gpu * memory.BYTES / memory.GIB:.2f} GiB" in memory.main(
        base + ["--tp", "2", "--drafter-rank", str(VENDOR_DRAFTER_RANK)]
    )


def test_recipe_commands_are_sized(commands):
    for rec in _hub_servers(commands):
        a = rec["parsed"]["args"]
        assert a["context_length"] and a["max_running_requests"], rec["source"]
        assert memory.KV_HEADS % a["tp_size"] == 0, f"{rec['source']}: TP must divide 8 KV heads"
        assert a["mem_fraction_static"] is not None, rec["source"]


def _memory_lines(path: Path) -> list[tuple[list[str], str]]:
    out = []
    for block in lc.markdown_blocks(path, "text"):
        lines = block.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("$ python examples/deploy/memory.py"):
                out.append((shlex.split(line)[3:], lines[i + 1] if i + 1 < len(lines) else ""))
    return out


def test_memory_figures_are_recomputed():
    found = 0
    for md in RECIPES:
        for args, stated in _memory_lines(md):
            assert memory.main(args) == stated, f"{md.name}: {args}"
            found += 1
    assert found >= 10


def test_every_recipe_command_has_its_memory_figure(commands):
    for rec in _hub_servers(commands):
        a = rec["parsed"]["args"]
        want = _memory_args(a)
        path = lc.ROOT / rec["source"].split("#")[0]
        stated = dict((tuple(args), line) for args, line in _memory_lines(path))
        assert tuple(want) in stated, f"{rec['source']}: no memory figure for {want}"
        total = float(re.search(r"= ([\d.]+) GiB per GPU", stated[tuple(want)]).group(1))
        assert total <= a["mem_fraction_static"] * GPU_GIB, f"{rec['source']}: {total} GiB"
        if a["disable_cuda_graph"]:  # eager logits fit in what SGLang leaves outside its pool
            logits = memory.eager_logits_gib(a["max_running_requests"], a["verify_width"])
            outside = (1 - a["mem_fraction_static"]) * GPU_GIB
            assert logits <= outside, f"{rec['source']}: {logits} GiB of logits"


def test_multi_node_ranks_agree(commands):
    recs = _from(commands, "examples/deploy/multi_node.md")
    assert sorted(r["parsed"]["args"]["node_rank"] for r in recs) == [0, 1]
    for r in recs:
        a = r["parsed"]["args"]
        assert a["nnodes"] == 2 and a["dist_init_addr"] and a["tp_size"] % 2 == 0
    strip = [[w for w in r["argv"] if w not in ("0", "1")] for r in recs]
    assert strip[0] == strip[1], "the two nodes' commands differ beyond --node-rank"


def test_routers_point_at_the_replicas(commands):
    recs = _from(commands, "examples/deploy/data_parallel_router.md")
    servers = {r["parsed"]["args"]["port"]: r for r in recs if r["kind"] == "server"}
    routed = []
    for router in (r for r in recs if r["kind"] == "router"):
        argv = router["argv"]
        urls = argv[argv.index("--worker-urls") + 1 :]
        urls = urls[: next((i for i, w in enumerate(urls) if w.startswith("--")), len(urls))]
        ports = [int(u.rsplit(":", 1)[1]) for u in urls]
        assert set(ports) <= set(servers), f"router to unknown replicas: {urls}"
        pool = {servers[p]["parsed"]["args"]["speculative_algorithm"] for p in ports}
        assert len(pool) == 1, "a router mixes TRIMODE and AR replicas"
        routed += ports
    assert sorted(routed) == sorted(servers), "every replica behind exactly one router"
    gpus = [r["env"]["CUDA_VISIBLE_DEVICES"] for r in servers.values()]
    assert sorted(gpus) == [str(i) for i in range(8)]


def test_kubernetes_manifest_runs_a_tested_command(commands):
    docs = {d["kind"]: d for d in yaml.safe_load_all(K8S.read_text())}
    assert set(docs) == {"PersistentVolumeClaim", "Deployment", "Service"}
    pod = docs["Deployment"]["spec"]["template"]
    assert (
        docs["Deployment"]["spec"]["selector"]["matchLabels"].items()
        <= pod["metadata"]["labels"].items()
    )
    (c,) = pod["spec"]["containers"]
    assert c["command"][0] in ("python", "python3") and c["command"][1:] == [
        "-m",
        "sglang.launch_server",
    ]
    tested = [r for r in _hub_servers(commands) if r["argv"] == c["args"]]
    assert tested, "the container's command is none of the recipes' tested commands"
    a = tested[0]["parsed"]["args"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == a["tp_size"]
    (port,) = c["ports"]
    assert port["containerPort"] == a["port"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": port["name"]}
    svc = docs["Service"]["spec"]
    assert svc["selector"] == pod["metadata"]["labels"]
    assert svc["ports"][0]["targetPort"] == port["name"]
    vols = {v["name"] for v in pod["spec"]["volumes"]}
    assert {m["name"] for m in c["volumeMounts"]} == vols
    # the header's memory figure is the recipe's
    stated = re.search(r"Memory: ([\d.]+) GiB", K8S.read_text()).group(1)
    assert f"= {stated} GiB per GPU" in memory.main(_memory_args(a))


def test_dockerfile_installs_the_plugin():
    text = (DEPLOY / "kubernetes" / "Dockerfile").read_text()
    copied = set()
    for line in text.splitlines():
        if line.startswith("COPY "):
            copied |= set(line.split()[1:-1])
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((lc.ROOT / "pyproject.toml").read_text())
    need = {"pyproject.toml", project["project"]["readme"]}
    need |= {p.split(".")[0] for p in project["tool"]["setuptools"]["packages"]}
    need |= set(project["tool"]["setuptools"]["package-dir"].values())
    need = {n.split("/")[0] for n in need}
    assert need <= copied, f"Dockerfile does not copy {need - copied}"
    assert all((lc.ROOT / p).exists() for p in copied)
    assert "pip install" in text and "sglang.srt.plugins" in text


def test_launch_block_guard_refuses_other_commands():
    lc.check_block_is_launch_only("X=1 python -m sglang.launch_server --port 1 &\nwait\n")
    with pytest.raises(AssertionError, match="rm"):
        lc.check_block_is_launch_only("python -m sglang.launch_server\nrm -rf /tmp/x\n")
