"""SPEED-Bench (nvidia/SPEED-Bench) runner for tri-mode models: ``python -m bench.speed_bench``.

Modules: ``dataset`` (load/validate/filter rows, refuse placeholders), ``backends`` (reference
engine, HTTP OpenAI/native, offline SGLang), ``metrics`` (reference-format specbench/timing),
``summary`` (TPF, per request/category, agreement with AR), ``report`` (files, tables, plots),
``protocol_server`` (a test server speaking the HTTP protocols, backed by the reference engine),
``cli`` (the sweep). The shipped sample prompts are in ``data/``, written for this repository.
"""
