"""Per-request decoding stats from SGLang's meta_info: forwards, accepted lengths, tokens/forward.

    python examples/request_stats.py [--url http://127.0.0.1:30000] [--mode self_spec_linear]

Prints one JSON object: the output token count and every speculative-decoding entry of the
request's meta_info (SGLang's spec_* counters and the plugin's trimode_* stats).
"""

import argparse
import json

import requests

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--url", default="http://127.0.0.1:30000")
p.add_argument("--mode", help="ar | diffusion | self_spec_linear | self_spec_quadratic | auto")
p.add_argument("--prompt", default="class Path:\n    def __init__(self, ")
p.add_argument("--max-new-tokens", type=int, default=32)
a = p.parse_args()

params = {"temperature": 0.0, "max_new_tokens": a.max_new_tokens}
if a.mode:
    params["custom_params"] = {"trimode_mode": a.mode}
resp = requests.post(a.url + "/generate", json={"text": a.prompt, "sampling_params": params})
resp.raise_for_status()
meta = resp.json()["meta_info"]
stats = {k: v for k, v in meta.items() if k.startswith(("spec_", "trimode_"))}
stats["completion_tokens"] = meta["completion_tokens"]
print(json.dumps(stats, indent=1))
