"""Complete a prompt through SGLang's OpenAI-compatible API, in one mode, optionally streaming.

    python examples/openai_client.py [--url http://127.0.0.1:30000] [--mode diffusion] [--stream]

--mode goes in the request's extra body as custom_params {"trimode_mode": MODE}; without it the
server's --trimode-mode applies. Prints the completion.
"""

import argparse

from openai import OpenAI

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--url", default="http://127.0.0.1:30000")
p.add_argument("--mode", help="ar | diffusion | self_spec_linear | self_spec_quadratic | auto")
p.add_argument("--prompt", default="class Path:\n    def __init__(self, ")
p.add_argument("--max-tokens", type=int, default=32)
p.add_argument("--stream", action="store_true")
a = p.parse_args()

client = OpenAI(base_url=a.url + "/v1", api_key="none")
extra = {"custom_params": {"trimode_mode": a.mode}} if a.mode else None
kwargs = dict(model="default", prompt=a.prompt, max_tokens=a.max_tokens, temperature=0.0)
if a.stream:
    for chunk in client.completions.create(**kwargs, stream=True, extra_body=extra):
        if chunk.choices:
            print(chunk.choices[0].text, end="", flush=True)
    print()
else:
    out = client.completions.create(**kwargs, extra_body=extra)
    print(out.choices[0].text)
