"""Generate through SGLang's native /generate API, in one mode, optionally streaming.

    python examples/native_client.py [--url http://127.0.0.1:30000] [--mode diffusion] [--stream]

--mode goes into sampling_params.custom_params {"trimode_mode": MODE}; without it the server's
--trimode-mode applies. Prints the completion.
"""

import argparse
import json

import requests

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--url", default="http://127.0.0.1:30000")
p.add_argument("--mode", help="ar | diffusion | self_spec_linear | self_spec_quadratic | auto")
p.add_argument("--prompt", default="class Path:\n    def __init__(self, ")
p.add_argument("--max-new-tokens", type=int, default=32)
p.add_argument("--stream", action="store_true")
a = p.parse_args()

params = {"temperature": 0.0, "max_new_tokens": a.max_new_tokens}
if a.mode:
    params["custom_params"] = {"trimode_mode": a.mode}
body = {"text": a.prompt, "sampling_params": params, "stream": a.stream}
resp = requests.post(a.url + "/generate", json=body, stream=a.stream, timeout=600)
resp.raise_for_status()
if not a.stream:
    print(resp.json()["text"])
else:  # server-sent events; each chunk carries the text so far
    shown = 0
    for line in resp.iter_lines():
        if line.startswith(b"data:") and line.strip() != b"data: [DONE]":
            text = json.loads(line[len(b"data:") :])["text"]
            print(text[shown:], end="", flush=True)
            shown = len(text)
    print()
