"""The `--trimode-*` settings for SGLang's offline `sglang.Engine` (no server, no command line).

`sglang.Engine(**kwargs)` builds SGLang's `ServerArgs` record, a closed `msgspec` struct that
refuses unknown keywords, so `Engine(trimode_mode=...)` cannot work. `server_args(**kwargs)`
builds that record itself: the keywords named like the flags' dests (`trimode_mode`,
`trimode_block_size`, `trimode_threshold`, `trimode_serve_modes`, `trimode_cost_file`, ...) are
checked exactly as the command line checks them (`flags.values_from_kwargs`, ValueError naming
the keyword) and kept on the record as `trimode_args` (a `flags.TriModeArgs`), where the
launcher's flag hook keeps them; every other keyword goes to `ServerArgs` unchanged:

    import sglang
    from sglang_trimode.srt.offline import server_args

    engine = sglang.Engine(server_args=server_args(
        model_path=MODEL, speculative_algorithm="TRIMODE",
        trimode_mode="diffusion", trimode_block_size=4, trimode_threshold=0.5,
    ))

Like `sglang.Engine(**kwargs)`, `log_level` defaults to "error".
"""

from __future__ import annotations

from typing import Any

from sglang_trimode.srt import flags


def server_args(**kwargs: Any):
    """SGLang's `ServerArgs` for `sglang.Engine(server_args=...)` with the tri-mode settings."""
    from sglang.srt.plugins import load_plugins
    from sglang.srt.server_args import ServerArgs

    from sglang_trimode.srt import plugin

    load_plugins()  # the plugin's hooks (request checks, stats) in this process too
    values = flags.values_from_kwargs({k: kwargs.pop(k) for k in flags.DESTS if k in kwargs})
    algorithm = kwargs.get("speculative_algorithm")
    msg = flags.check_combination(values, algorithm)
    if msg:  # in the keywords' words
        for flag in flags.FLAGS:
            msg = msg.replace(flag.name, flag.dest)
        raise ValueError(msg.replace("--speculative-algorithm ", "speculative_algorithm="))
    kwargs.setdefault("log_level", "error")
    record = ServerArgs(**kwargs)
    setattr(record, flags.SERVER_ARGS_ATTR, flags.TriModeArgs.from_values(values))
    plugin.set_served_modes(flags.served_modes(values, algorithm))
    return record
