"""The draft-only LoRA adapter ("drafter"), shared by the reference engine and the SGLang worker:
`lora.py` the module on every layer's `o_proj` (`DrafterLoRA`), `files.py` its folder on disk
and the checks that refuse an adapter the engines cannot apply exactly, `rows.py` which rows of
a forward get it (`--trimode-drafter-rows`). Training it: `sglang_trimode/training/drafter.py`."""
