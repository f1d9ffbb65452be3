"""One batch, one decoding mode per request: the server packs them into shared forwards.

    python examples/per_request_mode.py [--url http://127.0.0.1:30000]

Needs a TRIMODE server (examples/serve.sh with any mode but ar). Sends the same prompt once per
mode in a single native /generate call (sampling_params is a list, one per prompt) and prints
each mode's completion; greedy self-speculation reproduces AR token for token.
"""

import argparse

import requests

MODES = ["ar", "diffusion", "self_spec_linear", "self_spec_quadratic"]

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--url", default="http://127.0.0.1:30000")
p.add_argument("--prompt", default="class Path:\n    def __init__(self, ")
p.add_argument("--max-new-tokens", type=int, default=32)
a = p.parse_args()

params = [
    {"temperature": 0.0, "max_new_tokens": a.max_new_tokens, "custom_params": {"trimode_mode": m}}
    for m in MODES
]
body = {"text": [a.prompt] * len(MODES), "sampling_params": params}
resp = requests.post(a.url + "/generate", json=body, timeout=600)
resp.raise_for_status()
for mode, out in zip(MODES, resp.json()):
    print(f"=== {mode}\n{out['text']}")
