"""Write a synthetic MiniCPM-V 2.6-shaped checkpoint (random bf16 weights) to a directory.

    python tools/make_checkpoint.py --preset tiny -o /tmp/tiny [--seed N] [--shards N]
    python tools/make_checkpoint.py --preset full -o /data/minicpmv26-synthetic   # 16.2 GB

Presets: tiny (minicpmv.md section 6), tiny-gqa (other head counts, GQA 8:1, 3 layers),
small (~330 MiB, what ``wstream demo`` runs), full (the real 2.6 dimensions). The writer lives in
:mod:`wstream.synthetic` (so ``wstream demo`` works from an installed package); this is its
command line. Memory stays near one 8 Mi-element slab whatever the preset.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from wstream.errors import WStreamError
from wstream.synthetic import PRESETS, WrittenCheckpoint, preset, write_checkpoint

__all__ = ["PRESETS", "WrittenCheckpoint", "main", "preset", "write_checkpoint"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=PRESETS, default="tiny")
    parser.add_argument("-o", "--output", required=True, help="directory to write into")
    parser.add_argument("--seed", type=int, default=0, help="weights are a function of it")
    parser.add_argument("--shards", type=int, default=2, help="safetensors files (default 2)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    progress, close = _progress(args.preset)
    try:
        written = write_checkpoint(
            args.output, args.preset, seed=args.seed, shards=args.shards, progress=progress
        )
    except (WStreamError, OSError) as exc:
        print(f"make_checkpoint: error: {exc}", file=sys.stderr)
        return 1
    finally:
        close()
    summary = {
        "directory": str(written.directory),
        "files": [f.name for f in written.files],
        "total_size": written.total_size,
        "sha256": written.sha256,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"{args.preset}: {written.total_size:,} bytes in {len(written.files)} shards -> "
            f"{written.directory} in {summary['seconds']} s (sha256 {written.sha256[:16]}...)"
        )
    return 0


def _progress(name: str):  # type: ignore[no-untyped-def]
    """A tqdm bar on a terminal, nothing otherwise."""
    if not sys.stderr.isatty():
        return None, lambda: None
    from tqdm import tqdm

    from wstream.model.config import tensor_shapes

    total = 2 * sum(_numel(s) for s in tensor_shapes(preset(name)).values())
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name, leave=False)
    return bar.update, bar.close


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


if __name__ == "__main__":
    sys.exit(main())
