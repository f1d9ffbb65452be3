"""The `--trimode-*` launch flags: one definition, shared by the plugin, examples and tests.

Imports no sglang: `FLAGS`, `MODES` and `parse_trimode_args` work without SGLang installed.
`sglang_trimode.srt.plugin.register()` adds these flags to SGLang's own argument parser
(`python -m sglang.launch_server --help` lists them under "tri-mode (sglang-trimode)") and stores
the parsed values on the `ServerArgs` record as `trimode_args` (a frozen `TriModeArgs`, which
survives the pickling into SGLang's scheduler processes).

Flags (all optional):

- `--trimode-mode {ar,diffusion,self_spec_linear,self_spec_quadratic,auto}`: the server's default
  decoding mode (default `self_spec_linear`). Needs `--speculative-algorithm TRIMODE` unless it
  is `ar`. A request may override it with `custom_params: {"trimode_mode": ...}`.
- `--trimode-block-size N` (N >= 1): block / draft length (default: the checkpoint's
  `block_size`).
- `--trimode-threshold T` (0 < T <= 1): diffusion unmasking confidence threshold (default 0.9).
- `--trimode-serve-modes M1,M2,...`: the modes this server accepts per request (default: all of
  `ar,diffusion,self_spec_linear,self_spec_quadratic,auto`); a request asking for another gets a
  clear error (HTTP 400). `auto` chooses among the served lossless modes (and `ar`).
- `--trimode-cost-file PATH`: the forward-time model `auto` plans with, a calibration file
  written by `bench/calibrate.py` (`scheduler.cost.CostModel`); without it the worker fits one
  from its own timed forwards (AR until they span three shapes).
- `--trimode-auto-token-budget N` (N >= 1): mode `auto` plans at most N query tokens per forward
  for the auto requests together (default: no cap); requests that do not fit ride along.
- `--trimode-attention-impl {auto,triton,sdpa,torch}`: the attention of the worker's structural-mask
  forwards (`srt/attention.py`): `triton` is `sglang_trimode.kernels.extend_attention` (compiled
  on a CUDA device; on a CPU only under the Triton interpreter, `TRITON_INTERPRET=1` in the
  server's environment), `torch` its pure-torch reference `sglang_trimode.kernels.reference`
  (same signature), `sdpa` one batched torch SDPA call per layer (`dense_attention`). Default
  `auto`: triton on a CUDA device, sdpa otherwise.
- `--trimode-bonus-candidates C` (0 <= C <= 64, default 0): quadratic self-speculation steps get
  `C` more mask groups per acceptance length, each with a guess of the bonus token in its first
  slot (`modes.QuadraticSpecPolicy`); more drafts are accepted per forward at the price of
  `(k + 1) x C x B` more rows per step. Outputs are the same. Not used by `auto` requests (its
  cost model does not count those rows).
- `--trimode-fill-in {on,off}`: default `on`: while some requests of a decode step are still in
  a cycle of several forwards (a diffusion block, a linear draft + verify), the requests whose
  cycles take one forward (`ar`, `self_spec_quadratic`) and have finished theirs run further
  cycles in those forwards, as long as their tokens fit the step's KV slots, instead of waiting
  for the step's end. `off`: one cycle per request per step. Outputs are the same either way.
- `--trimode-pad-forwards {on,off}`: default `off`: `on` pads every structural-mask forward to a
  bucket of (segments, tokens), powers of two (`sglang_trimode.layout.Buckets`): the fixed shapes
  a CUDA graph replays. Padding segments attend only to themselves and write to SGLang's padding
  KV slot, so outputs are the same; without graphs it only costs (the padded tokens' compute).
- `--trimode-drafter {on,off,PATH}` and `--trimode-drafter-rows {self_spec,vendor,all}`: the
  draft-only LoRA adapter (`linear_spec_lora/`) and the drafting rows it is applied to
  (`sglang_trimode.adapter.rows`); see docs/trimode-flags.md.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any, NoReturn

#: Decoding modes a request can run in (those of the reference engine).
REQUEST_MODES = ("ar", "diffusion", "self_spec_linear", "self_spec_quadratic")
#: Choices of `--trimode-mode`, `--trimode-serve-modes` and a request's `trimode_mode` (`auto`:
#: the scheduler picks each request's mode and draft length every step).
MODES = (*REQUEST_MODES, "auto")
DEFAULT_MODE = "self_spec_linear"
DEFAULT_THRESHOLD = 0.9
#: Name of the speculative algorithm (`--speculative-algorithm TRIMODE`).
ALGORITHM = "TRIMODE"
#: Attribute of SGLang's `ServerArgs` record holding the parsed flags (a `TriModeArgs`).
SERVER_ARGS_ATTR = "trimode_args"
#: Per-request override key in `custom_params` (native API) / the OpenAI extra body.
REQUEST_MODE_KEY = "trimode_mode"
#: Choices of `--trimode-attention-impl` (`auto`: triton on a CUDA device, sdpa otherwise).
ATTENTION_IMPLS = ("auto", "triton", "sdpa", "torch")
DEFAULT_ATTENTION_IMPL = "auto"
#: Choices of `--trimode-fill-in`.
ON_OFF = ("on", "off")
#: Choices of `--trimode-drafter-rows` (`sglang_trimode.adapter.rows.SCOPES`; no torch here).
DRAFTER_SCOPES = ("self_spec", "vendor", "all")


def _parse_int(text: str, expected: str = "an integer") -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def positive_int(text: str) -> int:
    value = _parse_int(text, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (>= 1), got {value}")
    return value


def threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def bonus_candidates(text: str) -> int:
    from sglang_trimode.validation import MAX_BONUS_CANDIDATES

    value = _parse_int(text)
    if not 0 <= value <= MAX_BONUS_CANDIDATES:
        raise argparse.ArgumentTypeError(
            f"must be in [0, {MAX_BONUS_CANDIDATES}] (0: off), got {value}"
        )
    return value


def bonus_lengths(text: str) -> int:
    value = _parse_int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0: every acceptance length), got {value}")
    return value


def mode_list(text: str) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in modes if m not in MODES]
    if not modes or bad:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(MODES)}; "
            f"got {text!r}" + (f" (unknown: {', '.join(bad)})" if bad else "")
        )
    return modes


def drafter_choice(text: str) -> str:
    """`on`, `off`, or an adapter folder (its contents are checked at launch, `spec._validate`)."""
    if text in ON_OFF or os.path.isdir(text):
        return text
    raise argparse.ArgumentTypeError(
        f"expected on, off or an adapter folder (adapter_config.json + "
        f"adapter_model.safetensors), got {text!r}: no such folder"
    )


def cost_file(text: str) -> str:
    """A calibration file `scheduler.cost.CostModel.load` reads (checked at parse time)."""
    from sglang_trimode.scheduler.cost import CostModel

    try:
        CostModel.load(text)
    except (OSError, ValueError, TypeError) as e:
        raise argparse.ArgumentTypeError(f"cannot read a cost model from {text!r}: {e}") from None
    return text


@dataclass(frozen=True)
class Flag:
    name: str
    dest: str
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    type: Any = str
    metavar: str | None = None

    def add_to(self, parser: argparse.ArgumentParser | Any) -> None:
        kwargs: dict[str, Any] = {"dest": self.dest, "default": self.default, "help": self.help}
        if self.choices is not None:
            kwargs["choices"] = self.choices
        if self.type is not str:
            kwargs["type"] = self.type
        if self.metavar is not None:
            kwargs["metavar"] = self.metavar
        parser.add_argument(self.name, **kwargs)


FLAGS: tuple[Flag, ...] = (
    Flag(
        "--trimode-mode",
        "trimode_mode",
        None,
        f"Tri-mode decoding mode (default {DEFAULT_MODE}); every mode but 'ar' needs "
        f"--speculative-algorithm {ALGORITHM}. A request may override it with "
        f'custom_params {{"{REQUEST_MODE_KEY}": MODE}}.',
        choices=MODES,
    ),
    Flag(
        "--trimode-block-size",
        "trimode_block_size",
        None,
        "Tri-mode block / draft length (>= 1; default: the checkpoint's block_size).",
        type=positive_int,
        metavar="N",
    ),
    Flag(
        "--trimode-threshold",
        "trimode_threshold",
        None,
        f"Diffusion unmasking confidence threshold in (0, 1] (default {DEFAULT_THRESHOLD}).",
        type=threshold,
        metavar="T",
    ),
    Flag(
        "--trimode-serve-modes",
        "trimode_serve_modes",
        None,
        "Comma-separated modes this server accepts per request (default: all of "
        f"{','.join(MODES)}); other requests get HTTP 400.",
        type=mode_list,
        metavar="M1,M2",
    ),
    Flag(
        "--trimode-cost-file",
        "trimode_cost_file",
        None,
        "Forward-time model for mode 'auto': a calibration file written by bench/calibrate.py "
        "(default: fitted from the server's own timed forwards).",
        type=cost_file,
        metavar="PATH",
    ),
    Flag(
        "--trimode-auto-token-budget",
        "trimode_auto_token_budget",
        None,
        "Mode 'auto': the most query tokens the auto requests together put into one forward "
        "(>= 1; default: no cap). Under it the policy drafts less as the load grows (AR takes 1 "
        "token, a linear block B tokens, a quadratic block B (B + 1)); requests that do not "
        "fit ride along for that forward.",
        type=positive_int,
        metavar="N",
    ),
    Flag(
        "--trimode-attention-impl",
        "trimode_attention_impl",
        None,
        "Attention of the TRIMODE worker's forwards: 'triton' (sglang_trimode.kernels; on a CPU "
        "only with TRITON_INTERPRET=1), 'sdpa' (one batched torch SDPA call per layer over a "
        "padded layout built once per forward), 'torch' (the kernels' pure-torch reference, a "
        "loop over requests) or 'auto' (default: triton on a CUDA device, sdpa otherwise).",
        choices=ATTENTION_IMPLS,
    ),
    Flag(
        "--trimode-fill-in",
        "trimode_fill_in",
        None,
        "While other requests of a step are mid-cycle (diffusion blocks, linear draft + verify), "
        "let finished one-forward requests (ar, self_spec_quadratic) run further cycles in those "
        "forwards: 'on' (default) or 'off' (one cycle per request per step).",
        choices=ON_OFF,
    ),
    Flag(
        "--trimode-pad-forwards",
        "trimode_pad_forwards",
        None,
        "Pad every structural-mask forward to a bucket of (segments, tokens), powers of two: the "
        "fixed shapes CUDA graphs replay. Same outputs; without graphs it only adds the padded "
        "tokens' compute. 'on' or 'off' (default).",
        choices=ON_OFF,
    ),
    Flag(
        "--trimode-drafter",
        "trimode_drafter",
        None,
        "The draft-only LoRA adapter on o_proj (PEFT layout): 'on' (default: the checkpoint's "
        "linear_spec_lora/, the vendor's, or the older drafter_lora/, when it has one), 'off', "
        "or PATH (an adapter folder). Applied to the rows --trimode-drafter-rows picks, never "
        "to rows that verify or commit. A malformed adapter stops the launch.",
        type=drafter_choice,
        metavar="{on,off,PATH}",
    ),
    Flag(
        "--trimode-drafter-rows",
        "trimode_drafter_rows",
        None,
        "Which drafting rows get the drafter: 'self_spec' (default: linear drafts and quadratic "
        "mask groups), 'vendor' (the vendor's switching: linear draft forwards only) or 'all' "
        "(diffusion blocks too, which changes diffusion's output).",
        choices=DRAFTER_SCOPES,
    ),
    Flag(
        "--trimode-bonus-candidates",
        "trimode_bonus_candidates",
        None,
        "Quadratic self-speculation: C more mask groups per acceptance length, each guessing the "
        "bonus token (more tokens per forward, more rows per step; same output). Default 0.",
        type=bonus_candidates,
        metavar="C",
    ),
    Flag(
        "--trimode-bonus-lengths",
        "trimode_bonus_lengths",
        None,
        "With --trimode-bonus-candidates: only the G shortest acceptance lengths (0..G-1) get the "
        "guessing groups, so a step adds C x G x B rows instead of C x (k + 1) x B (most steps "
        "accept few drafts). Default 0: every acceptance length.",
        type=bonus_lengths,
        metavar="G",
    ),
)

DESTS = tuple(f.dest for f in FLAGS)
GROUP_TITLE = "tri-mode (sglang-trimode)"


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Add the `--trimode-*` flags to `parser` (idempotent)."""
    if any(a.dest == FLAGS[0].dest for a in parser._actions):
        return
    group = parser.add_argument_group(GROUP_TITLE)
    for flag in FLAGS:
        flag.add_to(group)


@dataclass(frozen=True)
class TriModeArgs:
    """The `--trimode-*` flags as given (None: not given), typed: the one record the plugin puts
    on SGLang's `ServerArgs` (`server_args.trimode_args`; a frozen dataclass of plain values, so
    it is pickled with the record into every process SGLang starts). `resolve` turns it into the
    server's `TriModeSettings` (defaults filled in)."""

    mode: str | None = None
    block_size: int | None = None
    threshold: float | None = None
    serve_modes: tuple[str, ...] | None = None
    cost_file: str | None = None
    auto_token_budget: int | None = None
    attention_impl: str | None = None
    fill_in: str | None = None
    pad_forwards: str | None = None
    drafter: str | None = None
    drafter_rows: str | None = None
    bonus_candidates: int | None = None
    bonus_lengths: int | None = None

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> TriModeArgs:
        """From `{dest: value}` (`values_from_namespace`, `values_from_kwargs`)."""
        return cls(**{dest.removeprefix(PREFIX): value for dest, value in values.items()})

    def values(self) -> dict[str, Any]:
        """`{dest: value}` for every flag (None: not given)."""
        return {dest: getattr(self, dest.removeprefix(PREFIX)) for dest in DESTS}


#: Every flag's dest is `PREFIX` + its `TriModeArgs` field.
PREFIX = "trimode_"


def values_from_namespace(ns: argparse.Namespace) -> dict[str, Any]:
    """The explicitly given `--trimode-*` values (None for absent flags)."""
    return {d: getattr(ns, d, None) for d in DESTS}


def check_combination(values: dict[str, Any], speculative_algorithm: str | None) -> str | None:
    """An error message when the flags cannot be served together, else None."""
    is_trimode = (speculative_algorithm or "").upper() == ALGORITHM
    mode = values.get("trimode_mode")
    if not is_trimode:
        given = [f.name for f in FLAGS if values.get(f.dest) is not None]
        if mode not in (None, "ar") or (given and mode is None):
            return (
                f"{', '.join(given)} need --speculative-algorithm {ALGORITHM} "
                "(without it the server decodes plain AR only)"
            )
    if values.get("trimode_bonus_lengths") and not values.get("trimode_bonus_candidates"):
        return (
            "--trimode-bonus-lengths needs --trimode-bonus-candidates > 0 (it limits which "
            "acceptance lengths get the candidates' groups)"
        )
    serve = values.get("trimode_serve_modes")
    if serve is not None and mode is not None and mode not in serve:
        return f"--trimode-mode {mode} is not among --trimode-serve-modes {','.join(serve)}"
    auto = mode == "auto" or serve is None or "auto" in serve
    if values.get("trimode_auto_token_budget") is not None and not auto:
        return (
            "--trimode-auto-token-budget applies to mode auto, which this server does not serve "
            "(add auto to --trimode-serve-modes, or drop the budget)"
        )
    return None


def parse_trimode_args(argv: list[str]) -> dict[str, Any]:
    """Parse only the `--trimode-*` flags out of a command line (others are ignored)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_flags(parser)
    ns, _ = parser.parse_known_args(argv)
    return values_from_namespace(ns)


@dataclass(frozen=True)
class TriModeSettings:
    """Resolved server-wide settings."""

    mode: str
    block_size: int
    threshold: float
    serve_modes: tuple[str, ...]
    cost_file: str | None = None
    auto_token_budget: int | None = None  # None: no cap
    attention_impl: str = DEFAULT_ATTENTION_IMPL
    fill_in: bool = True
    pad_forwards: bool = False
    drafter: str = "on"  # on, off or an adapter folder
    drafter_rows: str = DRAFTER_SCOPES[0]
    bonus_candidates: int = 0
    bonus_lengths: int = 0


def resolve(values: dict[str, Any] | None, model_block_size: int) -> TriModeSettings:
    values = values or {}
    mode = values.get("trimode_mode") or DEFAULT_MODE
    serve = values.get("trimode_serve_modes") or MODES
    return TriModeSettings(
        mode=mode,
        block_size=values.get("trimode_block_size") or int(model_block_size),
        threshold=(
            DEFAULT_THRESHOLD
            if values.get("trimode_threshold") is None
            else values["trimode_threshold"]
        ),
        serve_modes=tuple(serve),
        cost_file=values.get("trimode_cost_file"),
        auto_token_budget=values.get("trimode_auto_token_budget"),
        attention_impl=values.get("trimode_attention_impl") or DEFAULT_ATTENTION_IMPL,
        fill_in=values.get("trimode_fill_in") != "off",
        pad_forwards=values.get("trimode_pad_forwards") == "on",
        drafter=values.get("trimode_drafter") or "on",
        drafter_rows=values.get("trimode_drafter_rows") or DRAFTER_SCOPES[0],
        bonus_candidates=values.get("trimode_bonus_candidates") or 0,
        bonus_lengths=values.get("trimode_bonus_lengths") or 0,
    )


def verify_width(settings: TriModeSettings) -> int:
    """Most tokens one request emits, and so commits, in one decode step: SGLang's
    `speculative_num_draft_tokens`, from which it reserves `2 x` this many KV slots past each
    request's committed prefix every step. One cycle of any mode emits at most `B` tokens (and
    keeps the KV of at most `B`: a quadratic step's mask groups and a diffusion draft write none,
    `MaskDescriptor.committable`); `--trimode-fill-in` lets one-forward cycles add up to another
    `B` (so a quadratic request fits one more cycle)."""
    b = settings.block_size
    return 2 * b if settings.fill_in else b


def triton_interpret_env(environ=None) -> bool:
    """Whether `TRITON_INTERPRET` asks for Triton's interpreter (Triton's own truthy values)."""
    value = (os.environ if environ is None else environ).get("TRITON_INTERPRET", "")
    return value.strip().lower() in ("1", "true", "on", "yes")


def resolve_attention_impl(impl: str | None, device_type: str) -> str:
    """`triton`, `sdpa` or `torch` for `--trimode-attention-impl` on a `device_type` device."""
    impl = impl or DEFAULT_ATTENTION_IMPL
    if impl not in ATTENTION_IMPLS:
        raise ValueError(
            f"--trimode-attention-impl {impl!r}: expected one of {', '.join(ATTENTION_IMPLS)}"
        )
    if impl == "auto":
        return "triton" if device_type == "cuda" else "sdpa"
    return impl


def attention_impl_error(impl: str | None, device_type: str, interpreted: bool) -> str | None:
    """An error message when `--trimode-attention-impl` cannot run on this device, else None.
    `interpreted`: Triton runs in interpreter mode (`TRITON_INTERPRET=1`)."""
    try:
        resolved = resolve_attention_impl(impl, device_type)
    except ValueError as e:
        return str(e)
    if resolved == "triton" and device_type == "cpu" and not interpreted:
        return (
            "--trimode-attention-impl triton on a CPU needs the Triton "
            "interpreter: set TRITON_INTERPRET=1 in the server's environment (slow; for tests), "
            "or use --trimode-attention-impl torch (or auto) on this device"
        )
    return None


def served_modes(values: dict[str, Any], speculative_algorithm: str | None) -> tuple[str, ...]:
    """Request modes a server started with these flags can serve (plain servers: `ar` only)."""
    if (speculative_algorithm or "").upper() != ALGORITHM:
        return ("ar",)
    return tuple(values.get("trimode_serve_modes") or MODES)


def check_request_mode(mode: Any, served: tuple[str, ...] | None) -> str | None:
    """An error message for a request's `trimode_mode` value, else None."""
    if mode not in MODES:
        return f"unknown {REQUEST_MODE_KEY} {mode!r}; expected one of {', '.join(MODES)}"
    if served is not None and mode not in served:
        hint = (
            f"start it with --speculative-algorithm {ALGORITHM}"
            if served == ("ar",)
            else "see --trimode-serve-modes"
        )
        return (
            f"{REQUEST_MODE_KEY} {mode!r} is not served by this server (it serves: "
            f"{', '.join(served)}; {hint})"
        )
    return None


#: SGLang sampling fields the TRIMODE worker does not apply, with their neutral values. A request
#: setting one is refused: it would otherwise get an answer that silently ignores it.
IGNORED_SAMPLING: dict[str, Any] = {
    "beam_width": 1,
    "watermark": None,
}


def unsupported_sampling_error(params: Any, custom_logit_processor: Any = None) -> str | None:
    """The 400 message for a request whose `sampling_params` (a dict, or None) set a field the
    TRIMODE worker does not apply, or that brings a custom logit processor; else None."""
    params = params if isinstance(params, dict) else {}
    asked = [
        name
        for name, neutral in IGNORED_SAMPLING.items()
        if params.get(name) not in (None, neutral) and params.get(name) != {}
    ]
    if custom_logit_processor:
        asked.append("custom_logit_processor")
    if not asked:
        return None
    return (
        f"{', '.join(asked)}: not applied with --speculative-algorithm {ALGORITHM} (its worker "
        "samples with temperature, top_p, top_k, min_p and sampling_seed and applies logit_bias, "
        "min_new_tokens, the frequency, presence and repetition penalties and json_schema / "
        "regex / ebnf / structural_tag; stop strings and stop token ids work): drop them, or send "
        f"the request to a server started without {ALGORITHM} (plain AR)"
    )


def unsupported_server_error(return_hidden_states: Any, hidden_states_mode: Any) -> str | None:
    """The launch error for server flags the TRIMODE worker cannot honour, else None."""
    if return_hidden_states or hidden_states_mode:
        return (
            f"--enable-return-hidden-states / --return-hidden-states-mode: the {ALGORITHM} "
            "worker returns no hidden states; drop the flag, or serve without "
            f"--speculative-algorithm {ALGORITHM}"
        )
    return None


class _RaisingParser(argparse.ArgumentParser):
    """argparse that raises ValueError(message) instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise ValueError(message)


def values_from_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The `--trimode-*` values from Python keywords named like the flags' dests
    (`trimode_mode="diffusion"`, `trimode_block_size=4`, `trimode_serve_modes=["ar", "auto"]`,
    ...), parsed by the command line's own parser (`add_flags`) from `--flag=value` words;
    absent or None: not given. `sglang.Engine(**kwargs)` / `ServerArgs(**kwargs)` take these
    (plugin hook); a bad value is a ValueError naming the keyword."""
    unknown = sorted(set(kwargs) - set(DESTS))
    if unknown:
        raise ValueError(f"unknown tri-mode keyword(s) {', '.join(unknown)}; known: {DESTS}")
    argv, by_name = [], {}
    for flag in FLAGS:
        value = kwargs.get(flag.dest)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int, float, list, tuple)):
            raise ValueError(f"{flag.dest}={value!r}: expected {flag.metavar or 'a string'}")
        text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        argv.append(f"{flag.name}={text}")
        by_name[flag.name] = flag
    parser = _RaisingParser(add_help=False)
    add_flags(parser)
    try:
        return values_from_namespace(parser.parse_args(argv))
    except ValueError as e:  # "argument --trimode-x: why" -> "trimode_x=value: why"
        name, _, why = str(e).removeprefix("argument ").partition(": ")
        flag = by_name.get(name.split("/")[0])
        if flag is None:
            raise
        raise ValueError(f"{flag.dest}={kwargs[flag.dest]!r}: {why}") from None
