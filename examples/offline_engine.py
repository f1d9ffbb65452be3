"""Offline generation with sglang.Engine (no server), one decoding mode per request.

    python examples/offline_engine.py [--model PATH] [--device cpu|cuda] [--modes ar,diffusion]

The plugin loads itself in the engine's processes; --trimode-* server defaults apply, and each
request picks its mode with custom_params {"trimode_mode": MODE}. Prints each mode's completion.
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

    engine = sglang.Engine(model_path=a.model, speculative_algorithm="TRIMODE", **cpu)
    modes = a.modes.split(",")
    params = [{"temperature": 0.0, "max_new_tokens": a.max_new_tokens,
               "custom_params": {"trimode_mode": m}} for m in modes]  # fmt: skip
    outs = engine.generate(prompt=[a.prompt] * len(modes), sampling_params=params)
    for mode, out in zip(modes, outs):
        print(f"=== {mode}\n{out['text']}")
    engine.shutdown()
