"""`TriModeWorker`: the TRIMODE speculative worker (in progress, see issue 4)."""

from __future__ import annotations

from sglang.srt.speculative.base_spec_worker import BaseSpecWorker


class TriModeWorker(BaseSpecWorker):
    def __init__(self, server_args, gpu_id, nccl_port, target_worker):
        super().__init__()
        raise NotImplementedError("TRIMODE worker: not written yet")
