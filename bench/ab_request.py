"""The harness's wstream request from several checkouts, interleaved round by round.

    python bench/ab_request.py [--rounds 6] [--new-tokens 8] [--data DIR] CHECKOUT[:m] ...

Runs ``bench/_contenders.py wstream`` (the harness's e-k2 contender: budget a quarter of the
container, prefetch 2, one image slice, 16 text ids) from each checkout with that checkout's own
``.venv/bin/python``, warm page cache, alternating the order every round; ``:m`` opens the
container mapped (``Container(mapped=True)``) instead of the pread default. Prints each run's
stage timings and the medians per checkout. The data directory is one ``bench/harness.py
--size 256M`` prepared (its ``raw.wst`` and checkpoint). Figures: ``bench/results/AB.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from pathlib import Path

import numpy as np

MiB = 1 << 20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkouts", nargs="+", help="checkout directories, ':m' for mapped")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--data", type=Path, default=Path("/work/bench-data/harness-abB2/256M"))
    args = ap.parse_args()
    cfg = json.loads((args.data / "checkpoint" / "config.json").read_text())
    ids = np.random.default_rng(0).integers(0, cfg["vocab_size"], 16).tolist()
    budget = (args.data / "raw.wst").stat().st_size // 4 // MiB * MiB
    runs: dict[str, list[dict]] = {c: [] for c in args.checkouts}
    for r in range(args.rounds):
        for c in args.checkouts if r % 2 == 0 else args.checkouts[::-1]:
            tree = Path(c.removesuffix(":m"))
            child = {
                "data": str(args.data),
                "container": "raw.wst",
                "budget": budget,
                "prefetch": 2,
                "ids": ids,
                "new_tokens": args.new_tokens,
                "out": "/tmp/ab_request.npz",
                "mapped": c.endswith(":m"),
            }
            cmd = [str(tree / ".venv/bin/python"), str(tree / "bench/_contenders.py"), "wstream"]
            out = subprocess.run(
                [*cmd, json.dumps(child)], capture_output=True, text=True, check=True
            ).stdout
            d = json.loads(out.strip().splitlines()[-1])
            runs[c].append(d)
            stages = " ".join(f"{k} {v:.2f}" for k, v in d["timings"].items())
            print(f"{c} round {r}: total {d['total_s']:.2f} ({stages}) read {d['read_s']:.2f}")
    print()
    for c, ds in runs.items():
        med = {k: statistics.median(d["timings"][k] for d in ds) for k in ds[0]["timings"]}
        stages = " ".join(f"{k} {v:.2f}" for k, v in med.items())
        total = statistics.median(d["total_s"] for d in ds)
        print(f"{c}: median total {total:.2f} ({stages})")


if __name__ == "__main__":
    main()
