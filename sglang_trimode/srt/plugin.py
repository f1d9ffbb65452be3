"""The `sglang.srt.plugins` entry point (`trimode = "sglang_trimode.srt.plugin:register"`).

SGLang calls `register()` once in every process it starts (launcher, tokenizer manager,
scheduler, detokenizer), so all state is (re-)created here. It registers:

- the config class with transformers' `AutoConfig` and the model class
  `NemotronLabsDiffusionModel` in SGLang's `ModelRegistry`;
- the speculative algorithm `TRIMODE` (`sglang_trimode.srt.spec`), whose worker is
  `sglang_trimode.srt.worker.TriModeWorker`;
- the `--trimode-*` flags (`sglang_trimode.srt.flags`): hooks on `ServerArgs.add_cli_args` add
  them to SGLang's parser, and on `ServerArgs.from_cli_args` keep their values on the record as
  `trimode_args`, a typed `flags.TriModeArgs` (checked: modes other than `ar` need
  `--speculative-algorithm TRIMODE`);
- a check of each request's `custom_params["trimode_mode"]` (hook on `SamplingParams.verify`, in
  the tokenizer manager): an unknown mode, or one the server does not serve, is a clear HTTP 400;
- a check of each prompt (hook on `TokenizerManager._validate_one_request`): one holding a token
  id outside [0, vocabulary) (which would crash the scheduler in the embedding) or the
  checkpoint's mask token is a clear HTTP 400 naming the field and the position; on a TRIMODE
  server, a request for sampling fields its worker does not apply (`flags.IGNORED_SAMPLING`:
  grammars, beams, custom logit processors) too;
- the per-request stats `trimode_mode` / `trimode_forwards` / `trimode_accept_lengths` /
  `trimode_step_modes` in each response's `meta_info` (hook on
  `TokenizerManager.update_request_meta_info`, `srt/stats.py`);
- with `SGLANG_TRIMODE_STEP_PROFILE=FILE` only: per-step timing hooks (`srt/step_profile.py`).
"""

from __future__ import annotations

import argparse

from sglang_trimode.srt import flags, stats, step_profile

_ADD_CLI_ARGS = "sglang.srt.server_args.ServerArgs.add_cli_args"
_INTERNAL_STATE = (
    "sglang.srt.managers.scheduler_components.internal_state."
    "SchedulerInternalStateController._add_speculative"
)
_FROM_CLI_ARGS = "sglang.srt.server_args.ServerArgs.from_cli_args"
_VERIFY_SAMPLING = "sglang.srt.sampling.sampling_params.SamplingParams.verify"
_VALIDATE_REQUEST = "sglang.srt.managers.tokenizer_manager.TokenizerManager._validate_one_request"
_UPDATE_META_INFO = (
    "sglang.srt.managers.tokenizer_manager.TokenizerManager.update_request_meta_info"
)
_hooks_registered = False
#: Modes requests may ask for on the server this process launched (None: not known here). A
#: module value because the hook that reads it (`SamplingParams.verify`, in the tokenizer
#: manager) has no `ServerArgs` at hand; set where the `TriModeArgs` record is made.
_served_modes: tuple[str, ...] | None = None


def _after_add_cli_args(result, parser, *args, **kwargs):
    flags.add_flags(parser)
    return result


def _around_from_cli_args(original, cls, args, *rest, **kwargs):
    values = flags.values_from_namespace(args)
    msg = flags.check_combination(values, getattr(args, "speculative_algorithm", None))
    if msg:
        argparse.ArgumentParser(prog="sglang serve").error(msg)
    server_args = original(cls, args, *rest, **kwargs)
    setattr(server_args, flags.SERVER_ARGS_ATTR, flags.TriModeArgs.from_values(values))
    global _served_modes
    _served_modes = flags.served_modes(values, getattr(args, "speculative_algorithm", None))
    return server_args


def set_served_modes(modes: tuple[str, ...] | None) -> None:
    """The modes requests may ask for in this process (`srt/offline.py`: an offline engine)."""
    global _served_modes
    _served_modes = modes


def _after_verify_sampling(result, sampling_params, *args, **kwargs):
    """Reject a request's `custom_params["trimode_mode"]` the server cannot serve (HTTP 400:
    SGLang's tokenizer manager turns this ValueError into a 400 response)."""
    custom = getattr(sampling_params, "custom_params", None)
    if isinstance(custom, dict) and flags.REQUEST_MODE_KEY in custom:
        msg = flags.check_request_mode(custom[flags.REQUEST_MODE_KEY], _served_modes)
        if msg:
            raise ValueError(msg)
    return result


def _prompt_field(from_text: bool) -> str:
    return "text (OpenAI: prompt / messages)" if from_text else "input_ids"


def token_range_error(input_ids, vocab_size: int | None, from_text: bool) -> str | None:
    """The 400 message for a prompt holding a token id outside [0, vocab_size) (None when every
    id is inside): such an id would index past the embedding table and take the scheduler down
    (IndexError), losing every other request."""
    if not vocab_size or not input_ids:
        return None
    if 0 <= min(input_ids) and max(input_ids) < vocab_size:
        return None
    pos = next(i for i, t in enumerate(input_ids) if not 0 <= t < vocab_size)
    return (
        f"the prompt ({_prompt_field(from_text)}) holds token id {input_ids[pos]} at position "
        f"{pos}, outside the model's vocabulary: valid ids are in [0, {vocab_size}); fix or "
        "drop it before sending the request"
    )


def mask_token_error(input_ids, mask_token_id: int, from_text: bool) -> str | None:
    """The 400 message for a prompt holding the mask token (None when it does not)."""
    if mask_token_id is None or input_ids is None or mask_token_id not in input_ids:
        return None
    field = _prompt_field(from_text)
    return (
        f"the prompt ({field}) contains the mask token id {mask_token_id} at position "
        f"{list(input_ids).index(mask_token_id)}; it is reserved for diffusion drafts: remove it "
        "(or replace it) before sending the request"
    )


def _after_validate_one_request(result, manager, obj, input_ids, *args, **kwargs):
    """Refuse a prompt that holds a token id outside the vocabulary or the checkpoint's mask
    token, and on a TRIMODE server a request for what its worker does not apply (HTTP 400 via
    ValueError)."""
    from sglang_trimode.config import ARCHITECTURE

    algorithm = getattr(getattr(manager, "server_args", None), "speculative_algorithm", None)
    if (algorithm or "").upper() == flags.ALGORITHM:
        params = getattr(obj, "sampling_params", None)
        msg = flags.unsupported_sampling_error(params, getattr(obj, "custom_logit_processor", None))
        if msg:
            raise ValueError(msg)

    model_config = getattr(manager, "model_config", None)
    hf = getattr(model_config, "hf_config", None)
    if ARCHITECTURE not in (getattr(hf, "architectures", None) or ()):
        return result
    from_text = getattr(obj, "input_ids", None) is None
    vocab = getattr(model_config, "vocab_size", None) or getattr(hf, "vocab_size", None)
    msg = token_range_error(input_ids, vocab, from_text) or mask_token_error(
        input_ids, getattr(hf, "mask_token_id", None), from_text
    )
    if msg:
        raise ValueError(msg)
    return result


def _after_add_speculative(result, controller, state, *args, **kwargs):
    """AFTER hook on SGLang's internal-state readback (scheduler process): a TRIMODE worker's
    `internal_state()` under `state["trimode"]` (`GET /get_server_info`, `internal_states`)."""
    worker = getattr(controller.scheduler, "draft_worker", None)
    report = getattr(worker, "internal_state", None)
    if callable(report):
        state["trimode"] = report()
    return result


def _register_flag_hooks() -> None:
    global _hooks_registered
    if _hooks_registered:
        return
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register(_ADD_CLI_ARGS, _after_add_cli_args, HookType.AFTER)
    HookRegistry.register(_FROM_CLI_ARGS, _around_from_cli_args, HookType.AROUND)
    HookRegistry.register(_VERIFY_SAMPLING, _after_verify_sampling, HookType.AFTER)
    HookRegistry.register(_VALIDATE_REQUEST, _after_validate_one_request, HookType.AFTER)
    HookRegistry.register(_UPDATE_META_INFO, stats.after_update_request_meta_info, HookType.AFTER)
    HookRegistry.register(_INTERNAL_STATE, _after_add_speculative, HookType.AFTER)
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
    step_profile.install_from_env()  # only with SGLANG_TRIMODE_STEP_PROFILE (bench)
