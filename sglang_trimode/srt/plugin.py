"""The `sglang.srt.plugins` entry point (`trimode = "sglang_trimode.srt.plugin:register"`).

SGLang calls `register()` once in every process it starts (launcher, tokenizer manager,
scheduler, detokenizer), so all state is (re-)created here. It registers:

- the config class with transformers' `AutoConfig` and the model class
  `NemotronLabsDiffusionModel` in SGLang's `ModelRegistry`;
- the speculative algorithm `TRIMODE` (`sglang_trimode.srt.spec`), whose worker is
  `sglang_trimode.srt.worker.TriModeWorker`;
- the `--trimode-*` flags (`sglang_trimode.srt.flags`): hooks on `ServerArgs.add_cli_args` add
  them to SGLang's parser, and on `ServerArgs.from_cli_args` keep their values on the record as
  `_trimode_args` (checked: modes other than `ar` need `--speculative-algorithm TRIMODE`).
"""

from __future__ import annotations

import argparse

from sglang_trimode.srt import flags

_ADD_CLI_ARGS = "sglang.srt.server_args.ServerArgs.add_cli_args"
_FROM_CLI_ARGS = "sglang.srt.server_args.ServerArgs.from_cli_args"
_hooks_registered = False


def _after_add_cli_args(result, parser, *args, **kwargs):
    flags.add_flags(parser)
    return result


def _around_from_cli_args(original, cls, args, *rest, **kwargs):
    values = flags.values_from_namespace(args)
    msg = flags.check_combination(values, getattr(args, "speculative_algorithm", None))
    if msg:
        argparse.ArgumentParser(prog="sglang serve").error(msg)
    server_args = original(cls, args, *rest, **kwargs)
    setattr(server_args, flags.SERVER_ARGS_ATTR, values)
    return server_args


def _register_flag_hooks() -> None:
    global _hooks_registered
    if _hooks_registered:
        return
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register(_ADD_CLI_ARGS, _after_add_cli_args, HookType.AFTER)
    HookRegistry.register(_FROM_CLI_ARGS, _around_from_cli_args, HookType.AROUND)
    _hooks_registered = True


def register() -> None:
    """Register config, model class, the TRIMODE algorithm and the flags. Idempotent."""
    from sglang.srt.models.registry import ModelRegistry

    import sglang_trimode.config  # noqa: F401  (AutoConfig registration on import)
    from sglang_trimode.config import ARCHITECTURE
    from sglang_trimode.srt.model import NemotronLabsDiffusionModel
    from sglang_trimode.srt.spec import register_algorithm

    ModelRegistry.models[ARCHITECTURE] = NemotronLabsDiffusionModel
    register_algorithm()
    _register_flag_hooks()
