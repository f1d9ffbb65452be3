"""``python -m bench.speed_bench``: exit status 1 when greedy self-speculation differs from AR;
dataset and backend refusals end the run with their message (no traceback)."""

import sys

from bench.speed_bench.backends import BackendUnavailable
from bench.speed_bench.cli import main
from bench.speed_bench.dataset import DatasetError

if __name__ == "__main__":
    try:
        sys.exit(1 if main()["greedy_mismatches"] else 0)
    except (DatasetError, BackendUnavailable) as e:
        sys.exit(f"speed_bench: {e}")
