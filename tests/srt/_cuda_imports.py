"""Import SGLang's server modules as a CUDA machine would, on a CPU: `torch.cuda` claims an H200
(capability 9.0) and SGLang's `is_cuda()` says yes, so every `if _is_cuda: from sgl_kernel import
...` runs against the plugin's stand-in. Prints `OK module` or `FAIL module Error message` per
argument. Nothing is allocated on a device: this checks the import surface only.

    PYTHONPATH=sglang_trimode/srt/cpu_platform python tests/srt/_cuda_imports.py MODULE...
"""

import importlib
import sys

import torch

torch.cuda.is_available = lambda: True
torch.cuda.get_device_capability = lambda *a, **k: (9, 0)
torch.cuda.get_device_name = lambda *a, **k: "NVIDIA H200"
torch.cuda.device_count = lambda: 1

import sglang.srt.utils as utils  # noqa: E402
import sglang.srt.utils.common as common  # noqa: E402

for mod in (common, utils):
    for name in ("is_cuda", "is_cuda_alike"):
        if hasattr(mod, name):
            setattr(mod, name, lambda: True)

for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
        print("OK", name)
    except Exception as err:  # report every module, not just the first failure
        print("FAIL", name, type(err).__name__, str(err)[:300])
