"""Clients for a running server: OpenAI-compatible (``/v1/completions``, ``/v1/chat/completions``)
and SGLang's native ``/generate``, streaming (TTFT = first non-empty chunk), stdlib only.

Per-request stats come from SGLang's ``meta_info`` when the server sends it: ``completion_tokens``,
``spec_verify_ct`` (verify steps) and the fields the trimode plugin will add,
``trimode_forwards`` and ``trimode_accept_lengths``. What is not sent stays unavailable (None).
Concurrency N = N client threads, each sending its requests (and their turns) one after another.

The mode of a request: with ``trimode=True`` (CLI ``--trimode-server``) the client asks our server
(``--speculative-algorithm TRIMODE``) for it with ``custom_params: {"trimode_mode": MODE}``, where
SGLang reads it: in ``sampling_params`` for the native API, a top-level field for the OpenAI APIs.
Otherwise the mode is only a label (a baseline server serves what it was started with), unless
``extra_body`` carries ``"{mode}"``, which becomes the mode; ``extra_body`` is merged into the
body recursively (native: ``{"sampling_params": {...}}`` adds sampling parameters).
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from bench.speed_bench.backends.base import (
    Backend,
    BackendUnavailable,
    GenConfig,
    Progress,
    RequestResult,
    TurnResult,
    join_conversation,
)
from bench.speed_bench.dataset import Request

ENDPOINTS = {
    "openai": "/v1/completions",
    "openai-chat": "/v1/chat/completions",
    "native": "/generate",
}


def sse_events(resp: http.client.HTTPResponse) -> Iterator[dict]:
    """JSON objects of a ``data: ...`` event stream, up to ``data: [DONE]``."""
    for raw in resp:
        line = raw.decode("utf-8").strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


def merge(base: dict, extra: dict) -> dict:
    """``base`` updated by ``extra``; nested dicts are merged, not replaced."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class HttpBackend(Backend):
    def __init__(
        self,
        api: str,
        url: str,
        gen: GenConfig,
        model: str = "default",
        extra_body: dict | None = None,
        timeout: float = 600.0,
        trimode: bool = False,
    ) -> None:
        if api not in ENDPOINTS:
            raise ValueError(f"api must be one of {sorted(ENDPOINTS)}, got {api!r}")
        self.name, self.path, self.gen = api, ENDPOINTS[api], gen
        parts = urlsplit(url if "://" in url else f"http://{url}")
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.model, self.extra, self.timeout = model, extra_body or {}, timeout
        self.trimode = trimode

    def _body(self, turns: list[str], answers: list[str], mode: str) -> dict:
        g = self.gen
        extra = json.loads(json.dumps(self.extra).replace("{mode}", mode))
        custom = {"custom_params": {"trimode_mode": mode}} if self.trimode else {}
        eos = {"ignore_eos": True} if g.ignore_eos else {}
        if self.name == "native":
            params = {"max_new_tokens": g.max_new_tokens, "temperature": g.temperature}
            body = {
                "text": join_conversation(turns, answers),
                "sampling_params": {**params, **eos, **custom},
                "stream": True,
            }
            return merge(body, extra)
        body = {
            "model": self.model,
            "max_tokens": g.max_new_tokens,
            "temperature": g.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
            **eos,
            **custom,
        }
        if self.name == "openai-chat":
            msgs = [{"role": "user", "content": turns[0]}]
            for a, t in zip(answers, turns[1:]):
                msgs += [{"role": "assistant", "content": a}, {"role": "user", "content": t}]
            return merge({**body, "messages": msgs}, extra)
        return merge({**body, "prompt": join_conversation(turns, answers)}, extra)

    def _send(self, body: dict) -> TurnResult:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        res = TurnResult(start=time.perf_counter())
        try:
            conn.request("POST", self.path, json.dumps(body), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            if resp.status != 200:
                raise RuntimeError(f"{self.path}: HTTP {resp.status}: {resp.read()[:300]!r}")
            for ev in sse_events(resp):
                piece = self._consume(ev, res)
                if piece and res.ttft is None:
                    res.ttft = time.perf_counter() - res.start
        except (ConnectionError, OSError) as e:
            raise BackendUnavailable(f"{self.host}:{self.port}{self.path}: {e}") from None
        finally:
            conn.close()
        res.end = time.perf_counter()
        self._stats(res)
        return res

    def _consume(self, ev: dict, res: TurnResult) -> str:
        if "meta_info" in ev:
            res.meta = dict(ev["meta_info"])
        if ev.get("usage"):
            res.meta.setdefault("completion_tokens", ev["usage"].get("completion_tokens"))
        if self.name == "native":
            text = ev.get("text", "")
            piece = text[len(res.text) :] if text.startswith(res.text) else text
            res.text = text if text.startswith(res.text) else res.text + text
            if "output_ids" in ev:
                res.output_ids = list(ev["output_ids"])
            return piece
        piece = ""
        for ch in ev.get("choices") or []:
            piece += ch.get("text") or (ch.get("delta") or {}).get("content") or ""
        res.text += piece
        return piece

    @staticmethod
    def _stats(res: TurnResult) -> None:
        m = res.meta
        res.num_tokens = m.get("completion_tokens")
        res.forwards = m.get("trimode_forwards")
        al = m.get("trimode_accept_lengths")
        res.accept_lengths = list(al) if al is not None else None
        res.verify_steps = m.get("spec_verify_ct") or None  # 0 or absent: not speculative

    def _one(self, req: Request, mode: str) -> RequestResult:
        turns: list[TurnResult] = []
        for t in range(len(req.turns)):
            turns.append(self._send(self._body(req.turns[: t + 1], [x.text for x in turns], mode)))
        return RequestResult(req, turns)

    def run(
        self, requests: list[Request], mode: str, concurrency: int, progress: Progress
    ) -> list[RequestResult]:
        def task(req: Request) -> RequestResult:
            out = self._one(req, mode)
            progress(1)
            return out

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            return list(pool.map(task, requests))
