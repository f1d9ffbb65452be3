"""SPEED-Bench rows: load (JSONL, parquet, the hub), validate, filter, refuse placeholders.

Schema (both configs): question_id, category, sub_category, turns (list of user messages), source,
src_id, difficulty, multiturn. In the ``qualitative`` config ``category`` is one of the 11
categories; in the ``throughput_*`` configs it is the entropy tier (low_entropy, mixed,
high_entropy). Rows whose source may not be redistributed hold a placeholder on the hub; they are
refused here, never benchmarked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

PLACEHOLDER = "FULL BENCHMARK DATA SHOULD BE FETCHED FROM THE SOURCE USING SPECDEC_BENCH"
FIELDS = (
    "question_id",
    "category",
    "sub_category",
    "turns",
    "source",
    "src_id",
    "difficulty",
    "multiturn",
)
CATEGORIES = (
    "coding",
    "humanities",
    "math",
    "multilingual",
    "qa",
    "rag",
    "reasoning",
    "roleplay",
    "stem",
    "summarization",
    "writing",
)
ENTROPY_TIERS = ("low_entropy", "mixed", "high_entropy")
CONFIGS = (
    "qualitative",
    "throughput_1k",
    "throughput_2k",
    "throughput_8k",
    "throughput_16k",
    "throughput_32k",
)
DATA_DIR = Path(__file__).parent / "data"
SAMPLES = {
    "sample": DATA_DIR / "sample_qualitative.jsonl",
    "sample_throughput": DATA_DIR / "sample_throughput.jsonl",
}
REBUILD_HINT = (
    "rebuild the real prompts with NVIDIA Model-Optimizer: `cd examples/specdec_bench && "
    "python3 prepare_data.py --dataset speed --config <config>` (writes "
    "data/speed/<config>/test.parquet), then pass that file or folder to --dataset"
)


class DatasetError(ValueError):
    """A dataset file or row that cannot be benchmarked; the message names file, line, field."""


@dataclass(frozen=True)
class Request:
    question_id: str
    category: str
    turns: list[str]
    sub_category: str = ""


def _check_row(row: object, where: str) -> Request:
    if not isinstance(row, dict):
        raise DatasetError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    missing = [f for f in FIELDS if f not in row]
    if missing:
        raise DatasetError(f"{where}: missing field(s) {missing}; SPEED-Bench rows have {FIELDS}")
    turns = row["turns"]
    if hasattr(turns, "tolist"):  # numpy arrays from parquet readers
        turns = turns.tolist()
    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
        raise DatasetError(f"{where}: field 'turns' must be a non-empty list of strings")
    if not isinstance(row["category"], str) or not row["category"]:
        raise DatasetError(f"{where}: field 'category' must be a non-empty string")
    for i, turn in enumerate(turns):
        if PLACEHOLDER in turn:
            raise DatasetError(
                f"{where}: field 'turns[{i}]' holds the hub placeholder ({PLACEHOLDER!r}) of "
                f"question_id={row['question_id']}; its source may not be redistributed, so the "
                f"hub copy cannot be benchmarked: {REBUILD_HINT}"
            )
    return Request(str(row["question_id"]), row["category"], list(turns), str(row["sub_category"]))


def read_jsonl(path: Path) -> list[Request]:
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        out.append(_check_row(row, f"{path}:{n}"))
    if not out:
        raise DatasetError(f"{path}: no rows")
    return out


def read_parquet(path: Path) -> list[Request]:
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise DatasetError(f"{path}: no .parquet files in this folder")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        try:
            import pandas as pd
        except ImportError:
            raise DatasetError(
                f"{path}: reading parquet needs pyarrow (or pandas); install pyarrow, or convert "
                "the file to JSONL (one row object per line) and pass that instead"
            ) from None
        rows = [r for f in files for r in pd.read_parquet(f).to_dict("records")]
        return [_check_row(r, f"{files[0]}: row {i + 1}") for i, r in enumerate(rows)]
    out = []
    for f in files:
        for i, r in enumerate(pq.read_table(f).to_pylist()):
            out.append(_check_row(r, f"{f}: row {i + 1}"))
    return out


def read_hub(config: str) -> list[Request]:
    """``nvidia/SPEED-Bench`` from the hub (needs ``datasets`` and a network)."""
    try:
        from datasets import load_dataset
    except ImportError:
        raise DatasetError(
            f"--dataset {config}: loading from the hub needs the `datasets` package; install it, "
            "or pass a local JSONL/parquet copy"
        ) from None
    try:
        rows = load_dataset("nvidia/SPEED-Bench", config, split="test")
    except Exception as e:  # offline, gated, renamed: say so plainly
        raise DatasetError(
            f"--dataset {config}: the hub is not reachable or refused ({type(e).__name__}: {e}); "
            "pass a local JSONL/parquet copy instead"
        ) from None
    return [
        _check_row(dict(r), f"nvidia/SPEED-Bench[{config}] row {i + 1}") for i, r in enumerate(rows)
    ]


def load_requests(
    dataset: str,
    categories: list[str] | None = None,
    turns: str = "first",
    num_requests: int | None = None,
) -> list[Request]:
    """Rows of ``dataset`` (a sample name, a config name, a .jsonl/.parquet file or folder).

    ``categories`` filters on ``category`` (categories or entropy tiers); ``turns`` is ``first``
    (only the first user turn) or ``all``; ``num_requests`` keeps the first N after filtering.
    """
    if turns not in ("first", "all"):
        raise DatasetError(f"turns must be 'first' or 'all', got {turns!r}")
    path = SAMPLES.get(dataset, Path(dataset))
    if dataset in CONFIGS and not path.exists():
        rows = read_hub(dataset)
    elif not path.exists():
        raise DatasetError(
            f"--dataset {dataset}: no such file; give one of {sorted(SAMPLES)}, a hub config "
            f"{CONFIGS}, or a local .jsonl/.parquet file or folder"
        )
    elif path.suffix == ".jsonl" or path.suffix == ".json":
        rows = read_jsonl(path)
    else:
        rows = read_parquet(path)
    if categories:
        known = sorted({r.category for r in rows})
        unknown = sorted(set(categories) - set(known))
        if unknown:
            raise DatasetError(f"--categories: {unknown} not in {dataset} (it has {known})")
        rows = [r for r in rows if r.category in categories]
    if turns == "first":
        rows = [Request(r.question_id, r.category, r.turns[:1], r.sub_category) for r in rows]
    return rows[:num_requests] if num_requests else rows
