"""A small HTTP server speaking the OpenAI-compatible and SGLang-native streaming protocols,
backed by the reference engine: for protocol tests of the HTTP clients, not a serving system.

It is NOT SGLang: requests run one at a time under a lock, and the stream is replayed after the
whole generation, one chunk per engine step (the prefill token, then each verify/commit step's
tokens), so its timings mean nothing. ``meta_info`` carries what the trimode plugin is planned
to send: ``completion_tokens``, ``spec_verify_ct`` (0 for AR), ``trimode_forwards``,
``trimode_accept_lengths``. The mode comes from the body's ``trimode_mode`` (default ``ar``).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from bench.speed_bench.tokenize import encode


def _chunks(ids: list[int], steps: list[int]) -> list[list[int]]:
    out, pos = [ids[:1]], 1
    for a in steps:
        out.append(ids[pos : pos + a])
        pos += a
    return [c for c in out if c]


class ProtocolServer:
    def __init__(self, engine, tokenizer, block_size: int | None = None) -> None:
        self.engine, self.tokenizer, self.block_size = engine, tokenizer, block_size
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> ProtocolServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def generate(self, body: dict, path: str) -> tuple[list[int], object, int]:
        if path == "/generate":
            params = body.get("sampling_params", {})
            prompt = body.get("input_ids") or encode(self.tokenizer, body["text"])
            max_new = params.get("max_new_tokens", 128)
        else:
            text = body.get("prompt") or "\n\n".join(m["content"] for m in body["messages"])
            prompt, params, max_new = encode(self.tokenizer, text), body, body.get("max_tokens", 16)
        with self.lock:
            (out,) = self.engine.generate(
                [prompt],
                mode=body.get("trimode_mode", "ar"),
                max_new_tokens=max_new,
                block_size=self.block_size,
                temperature=params.get("temperature", 0.0),
            )
        return prompt, out, len(prompt)

    def events(self, body: dict, path: str) -> list[dict]:
        _, out, n_prompt = self.generate(body, path)
        ids, steps = out.token_ids, out.stats.accept_lengths
        meta = {
            "prompt_tokens": n_prompt,
            "completion_tokens": len(ids),
            "finish_reason": out.finish_reason,
            "spec_verify_ct": 0 if out.mode == "ar" else len(steps),
            "trimode_forwards": out.stats.forwards,
            "trimode_accept_lengths": list(steps),
        }
        events, seen = [], []
        for chunk in _chunks(ids, steps):
            piece_start = len(self.tokenizer.decode(seen))
            seen = seen + chunk
            text = self.tokenizer.decode(seen)
            if path == "/generate":
                events.append({"text": text, "output_ids": list(seen), "meta_info": meta})
            elif path == "/v1/completions":
                events.append({"choices": [{"index": 0, "text": text[piece_start:]}]})
            else:
                delta = {"content": text[piece_start:]}
                events.append({"choices": [{"index": 0, "delta": delta}]})
        if path != "/generate":
            usage = {"prompt_tokens": n_prompt, "completion_tokens": len(ids)}
            events.append({"choices": [], "usage": usage})
        return events

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path not in ("/generate", "/v1/completions", "/v1/chat/completions"):
                    self.send_error(404)
                    return
                events = server.events(body, self.path)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for ev in events:
                    self.wfile.write(f"data: {json.dumps(ev)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")

        return Handler
