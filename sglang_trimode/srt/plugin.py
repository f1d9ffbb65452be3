"""The `sglang.srt.plugins` entry point (`trimode = "sglang_trimode.srt.plugin:register"`).

SGLang calls `register()` once in every process it starts (launcher, tokenizer manager,
scheduler, detokenizer), so all state is (re-)created here. Today it registers the config class
with transformers' `AutoConfig` and the model class `NemotronLabsDiffusionModel` (plain AR
serving). Not registered yet (issue 4): the TRIMODE speculative algorithm, the attention backend
and the `--trimode-*` flags.
"""

from __future__ import annotations


def register() -> None:
    """Register the config and the SGLang model class. Idempotent."""
    from sglang.srt.models.registry import ModelRegistry

    import sglang_trimode.config  # noqa: F401  (AutoConfig registration on import)
    from sglang_trimode.config import ARCHITECTURE
    from sglang_trimode.srt.model import NemotronLabsDiffusionModel

    ModelRegistry.models[ARCHITECTURE] = NemotronLabsDiffusionModel
