"""Run one task of ``_tasks.py`` in this fresh interpreter and print its result as one JSON line.

    python bench/_child.py TASK '{"arg": value, ...}'

Started by :func:`_measure.run_child`; not meant to be run by hand (but it can be, to debug a task).
"""

from __future__ import annotations

import json
import os
import sys
import time

# What the `wstream` command sets for its own process before numpy loads (wstream.cli.entry):
# every task measures wstream as `wstream run` runs it. An explicit setting wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "1")

STARTED = time.perf_counter()


def main() -> int:
    import _tasks  # the script's folder (bench/) is sys.path[0]

    task, args = sys.argv[1], json.loads(sys.argv[2])
    result = getattr(_tasks, task)(**args)
    result["child_s"] = time.perf_counter() - STARTED
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
