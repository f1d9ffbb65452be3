"""`--speculative-algorithm TRIMODE`: the algorithm object SGLang's scheduler dispatches on.

`register_algorithm()` (called by `plugin.register()` in every process) registers `TRIMODE` with
`SpeculativeAlgorithm.register`; `SpeculativeAlgorithm.from_string("trimode")` then returns a
`TriModeSpecAlgo` whose `create_worker` yields `sglang_trimode.srt.worker.TriModeWorker`.
`handle_server_args` resolves the server settings the scheduler sizes memory by: overlap
scheduling and mixed chunks off, one draft chain (`topk` 1), and
`speculative_num_draft_tokens` = the most tokens a request emits in one decode step.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from sglang.srt.speculative.spec_info import SpeculativeAlgorithm
from sglang.srt.speculative.spec_registry import CustomSpecAlgo, get_spec

from sglang_trimode.srt import flags

logger = logging.getLogger(__name__)


def model_block_size(model_path: str | None) -> int:
    """`block_size` of the checkpoint's config.json (32, the vendor's, when absent)."""
    if model_path and os.path.isfile(os.path.join(model_path, "config.json")):
        with open(os.path.join(model_path, "config.json")) as f:
            return int(json.load(f).get("block_size", 32))
    return 32


def trimode_values(server_args: Any) -> dict[str, Any]:
    """The parsed `--trimode-*` values (`{dest: value}`, None: not given) of the `TriModeArgs`
    riding on a ServerArgs record (or a view of one); {} when it has none."""
    for obj in (server_args, getattr(server_args, "_cfg", None)):
        record = getattr(obj, flags.SERVER_ARGS_ATTR, None) if obj is not None else None
        if isinstance(record, flags.TriModeArgs):
            return record.values()
    return {}


def settings_from_server_args(server_args: Any) -> flags.TriModeSettings:
    return flags.resolve(trimode_values(server_args), model_block_size(server_args.model_path))


class TriModeSpecAlgo(CustomSpecAlgo):
    """`CustomSpecAlgo` plus the methods SGLang 0.5.23's scheduler calls but the base lacks."""

    def carries_draft_hidden_states(self) -> bool:
        return False

    def need_topk(self) -> bool:
        return False

    def has_draft_kv(self) -> bool:
        # Drafts never write KV; only verified/committed tokens keep theirs.
        return False

    def create_future_map(
        self,
        device,
        req_to_token_pool,
        needs_cpu_seq_lens: bool = True,
        needs_confidence_relay: bool = False,
    ):
        from sglang.srt.managers.overlap_utils import FutureMap

        return FutureMap(
            device, self, req_to_token_pool, needs_cpu_seq_lens, needs_confidence_relay
        )

    def handle_server_args(self, server_args) -> None:
        settings = settings_from_server_args(server_args)
        server_args.disable_overlap_schedule = True
        server_args.enable_mixed_chunk = False
        server_args.speculative_eagle_topk = 1
        width = flags.verify_width(settings)
        server_args.speculative_num_draft_tokens = width
        server_args.speculative_num_steps = max(1, settings.block_size - 1)
        logger.info(
            "TRIMODE: mode=%s block_size=%d threshold=%s serve_modes=%s attention_impl=%s "
            "fill_in=%s (%d tokens/step) drafter=%s bonus_candidates=%d "
            "bonus_lengths=%d pad_forwards=%s",
            settings.mode,
            settings.block_size,
            settings.threshold,
            ",".join(settings.serve_modes),
            settings.attention_impl,
            "on" if settings.fill_in else "off",
            width,
            settings.drafter,
            settings.bonus_candidates,
            settings.bonus_lengths,
            "on" if settings.pad_forwards else "off",
        )


def device_type(server_args: Any) -> str:
    """The server's device type (`--device`, else CUDA when available, as SGLang defaults)."""
    device = getattr(server_args, "device", None)
    if device:
        return str(device).split(":")[0]
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _validate(server_args) -> None:
    values = trimode_values(server_args)
    msg = flags.check_combination(values, server_args.speculative_algorithm)
    if msg is None:
        msg = flags.unsupported_server_error(
            getattr(server_args, "enable_return_hidden_states", False),
            getattr(server_args, "return_hidden_states_mode", None),
        )
    if msg is None:
        msg = flags.attention_impl_error(
            values.get("trimode_attention_impl"),
            device_type(server_args),
            flags.triton_interpret_env(),
        )
    if msg:
        raise ValueError(msg)
    check_drafter(server_args)


def check_drafter(server_args, fetch: bool = False) -> Path | None:
    """The drafter folder `--trimode-drafter` picks, or None; raises on a malformed one (the
    file and field named). At TP > 1 each rank's worker shards it (`srt/tp.py`). Run in the
    launching process (`_validate`: local checkpoints, checked against their config.json) and by
    the worker before it loads the adapter (`fetch`: a hub id's drafter folders are fetched into
    SGLang's download dir, `adapter_files.local_checkpoint`)."""
    from sglang_trimode.adapter.files import (
        adapter_folder,
        check_adapter,
        local_checkpoint,
        model_shapes,
    )

    settings = settings_from_server_args(server_args)
    path = server_args.model_path
    if settings.drafter == "on" and not os.path.isdir(path):
        if not fetch:
            return None  # a hub id: the worker fetches and checks its drafter
        path = local_checkpoint(
            path, getattr(server_args, "download_dir", None), getattr(server_args, "revision", None)
        )
    folder = adapter_folder(path, settings.drafter)
    if folder is None:
        return None
    config = os.path.join(path, "config.json")
    if os.path.isfile(config):
        with open(config) as f:
            check_adapter(folder, *model_shapes(json.load(f)))
    return folder


def register_algorithm() -> None:
    """Register `TRIMODE` once per process."""
    if get_spec(flags.ALGORITHM) is not None:
        return

    @SpeculativeAlgorithm.register(
        flags.ALGORITHM,
        supports_overlap=False,
        validate_server_args=_validate,
        spec_class=TriModeSpecAlgo,
    )
    def _factory(server_args):
        from sglang_trimode.srt.worker import TriModeWorker

        return TriModeWorker
