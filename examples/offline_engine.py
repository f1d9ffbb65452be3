"""Offline generation with sglang.Engine (no server), one decoding mode per request.

    python examples/offline_engine.py [--model PATH] [--device cpu|cuda] [--modes ar,diffusion]
        [--trimode-mode MODE] [--trimode-block-size N] [--trimode-threshold T]

The plugin loads itself in the engine's processes. sglang.Engine(**kwargs) refuses keywords
SGLang does not know, so the engine's tri-mode settings (what `--trimode-*` flags are to a
server) go through `sglang_trimode.srt.offline.server_args(..., trimode_mode=...,
trimode_block_size=..., trimode_threshold=...)` and `sglang.Engine(server_args=...)`. Each
request picks its mode with custom_params {"trimode_mode": MODE}; the mode `default` sends none
(the engine's trimode_mode). Prints each mode's completion.
"""

import argparse
import os
import sys

from sglang_trimode import default_model_path

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--model", default=str(default_model_path()))
p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
p.add_argument("--modes", default="ar,diffusion,self_spec_linear,self_spec_quadratic")
p.add_argument("--prompt", default="class Path:\n    def __init__(self, ")
p.add_argument("--max-new-tokens", type=int, default=32)
p.add_argument("--trimode-mode", help="the engine's default mode (default self_spec_linear)")
p.add_argument("--trimode-block-size", type=int, help="default: the checkpoint's block_size")
p.add_argument("--trimode-threshold", type=float, help="diffusion threshold (default 0.9)")
a = p.parse_args()

cpu = {}
if a.device == "cpu":  # SGLang's CPU engine + the plugin's plain-torch stand-in for sgl_kernel
    from sglang_trimode.srt.cpu_platform import PYTHONPATH_ENTRY

    os.environ["SGLANG_USE_CPU_ENGINE"] = "1"
    os.environ["PYTHONPATH"] = os.pathsep.join([PYTHONPATH_ENTRY, os.environ.get("PYTHONPATH", "")])
    sys.path.insert(0, PYTHONPATH_ENTRY)
    cpu = dict(device="cpu", attention_backend="torch_native", disable_cuda_graph=True,
               mem_fraction_static=0.05, max_total_tokens=4096, dtype="float32")  # fmt: skip

if __name__ == "__main__":  # SGLang spawns its scheduler: keep the engine under the main guard
    import sglang

    from sglang_trimode.srt.offline import server_args

    trimode = dict(trimode_mode=a.trimode_mode, trimode_block_size=a.trimode_block_size,
                   trimode_threshold=a.trimode_threshold)  # fmt: skip
    args = server_args(model_path=a.model, speculative_algorithm="TRIMODE", **trimode, **cpu)
    engine = sglang.Engine(server_args=args)
    modes = a.modes.split(",")
    params = [{"temperature": 0.0, "max_new_tokens": a.max_new_tokens,
               "custom_params": {} if m == "default" else {"trimode_mode": m}}
              for m in modes]  # fmt: skip
    outs = engine.generate(prompt=[a.prompt] * len(modes), sampling_params=params)
    for mode, out in zip(modes, outs):
        print(f"=== {mode}\n{out['text']}")
    engine.shutdown()
