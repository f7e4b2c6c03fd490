"""Cold decode steps of full-size containers, each run alone on an emptied page cache.

    python bench/cold_alone.py [--data /work/bench-data/full] [NAME ...]   (default: uint4 raw uint4)

Drops the whole page cache once (``sync; echo 1 > /proc/sys/vm/drop_caches``: needs root), then
for each ``NAME.wst`` under ``--data`` in the order given drops that file's pages and runs
``bench/full_model.py``'s request (one 448 x 448 slice, 16 ids, 8 new tokens, ``--budget 1G``) in
a fresh process, printing the page cache's size before it and the seconds per decode step. It
tells a disk- or compute-bound cold step from one slowed by reclaiming a full page cache
(bench/results/FULL_MODEL.md). Run ``full_model.py`` first: it makes the containers and card.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import full_model
import numpy as np
from _measure import drop_cache, wait_quiet


def _meminfo(*keys: str) -> str:
    rows = [ln.split() for ln in open("/proc/meminfo") if ln.startswith(keys)]
    return " ".join(f"{k} {int(v) / (1 << 20):.1f} GiB" for k, v, *_ in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=["uint4", "raw", "uint4"])
    ap.add_argument("--data", type=Path, default=Path("/work/bench-data/full"))
    args = ap.parse_args()
    ids = ",".join(str(int(i)) for i in np.random.default_rng(0).integers(0, 151666, 16))
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("1\n")
    for name in args.names:
        path = args.data / f"{name}.wst"
        drop_cache(path)
        wait_quiet(log=print)
        before = _meminfo("MemFree", "Cached")
        r = full_model.run_request(path, args.data / "card.png", ids, 8)
        t, steps = r["timings"], max(len(r["generated"]) - 1, 1)
        print(
            f"{name} cold ({before}): {t['decode'] / steps:.2f} s per decode step, prefill "
            f"{t['prefill']:.1f} s, vision {t['vision']:.1f} s, loader stalls "
            f"{r['loader']['stall_seconds']:.1f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
