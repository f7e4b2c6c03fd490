"""Does each fold pay end to end? Seconds per stage with and without it, at the 2.6 widths.

    python bench/fold_stages.py [--vision-layers 4] [--llm-layers 2] [--rounds 5]

A synthetic checkpoint with MiniCPM-V 2.6's widths (vision 1152 / 4304 / 16 heads, resampler
3584 / 28 heads over 1152-wide features, decoder 3584 / 18944 / 28 query and 4 key/value heads)
but ``--vision-layers`` of the 27 vision blocks, ``--llm-layers`` of the 28 decoder layers and a
2048-token vocabulary, packed raw bf16 once per variant. Each request is what ``wstream run``
does with one 448 x 448 slice (1024 patches): the weights streamed from the container under
``--budget 1G`` (``forward_weights``, two chunks ahead), 64 image positions and 16 text
positions prefilled, then ``--steps`` decode steps. The containers are read once before timing
(warm page cache); every round runs every variant once, in a rotating order, in this one
process, and each stage's median is reported as a ratio to the unfolded container's.

Variants:

- ``none``: ``pack`` without ``--fold`` (the baseline);
- ``qkv``: ``pack --fold qkv`` (at commit 0c844bc also ``gate_up`` and ``resampler_query``);
- ``norm affine (bound)``: the unfolded container with every norm's affine step (x * w + b)
  skipped: the most that folding the affine parts into the next linear could save, since that
  fold leaves every product as large as it is (the numbers are wrong, the time is the bound).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "1")  # as the wstream console script does

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

import wstream  # noqa: F401  (first, as `wstream run` does)
from wstream.container.reader import Container
from wstream.model import blockwise
from wstream.model.vlm import generate
from wstream.pack import pack
from wstream.stream.loader import forward_weights
from wstream.synthetic import _vlm, write_checkpoint

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BUDGET = 1 << 30
STAGES = ("vision", "resampler", "prefill", "decode")
TEXT = 16  # text positions beside the 64 image positions: 80, as bench/full_model.py
# The folds offered (wstream.model.folds.FOLDS). gate_up and resampler_query were measured with
# this script at commit 0c844bc, where they exist, and dropped (bench/results/FOLD.md).
FOLDS = {"none": None, "qkv": "qkv"}


def prepare(data: Path, vision_layers: int, llm_layers: int) -> dict[str, Path]:
    cfg = _vlm((1152, 4304, 16, vision_layers), (3584, 18944, 28, 4, llm_layers, 2048))
    ckpt = data / f"ckpt-v{vision_layers}-l{llm_layers}"
    if not (ckpt / "config.json").exists():
        write_checkpoint(ckpt, cfg, seed=0)
    out = {}
    for name, fold in FOLDS.items():
        path = data / f"{name}-v{vision_layers}-l{llm_layers}.wst"
        if not path.exists():
            pack(ckpt, path, fold=fold)
        out[name] = path
    return out


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


@contextmanager
def no_affine() -> Iterator[None]:
    """blockwise.scale_shift consuming its tensors without applying them (see the docstring)."""
    real = blockwise.scale_shift

    def skip(
        x: np.ndarray, cur: Any, weight: str, bias: str | None, *, inplace: bool = False
    ) -> np.ndarray:
        for _ in cur.blocks(*((weight,) if bias is None else (weight, bias))):
            pass
        return x

    blockwise.scale_shift = skip  # type: ignore[assignment]
    try:
        yield
    finally:
        blockwise.scale_shift = real


def request(path: Path, steps: int, rng: np.random.Generator) -> dict[str, float]:
    with Container(path) as c:
        source = forward_weights(c, budget=BUDGET)
        try:
            pixels = rng.uniform(-1, 1, (3, 448, 448)).astype(np.float32)
            ids = np.arange(64 + TEXT) % 2000
            out = generate(
                source,
                ids,
                pixels=pixels,
                image_bound=(2, 66),
                max_new_tokens=steps + 1,
                keep_logits=False,
            )
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()
    t = dict(out.timings)
    t["decode"] /= steps  # per decode step
    return t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vision-layers", type=int, default=4)
    ap.add_argument("--llm-layers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2, help="decode steps per request")
    ap.add_argument("--data", type=Path, default=Path("/tmp/wstream-fold-bench"))
    args = ap.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    paths = prepare(args.data, args.vision_layers, args.llm_layers)
    for p in paths.values():
        warm(p)
    rng = np.random.default_rng(0)
    variants: dict[str, Callable[[], dict[str, float]]] = {
        name: (lambda p=p: request(p, args.steps, rng)) for name, p in paths.items()
    }

    def bounded_affine() -> dict[str, float]:
        with no_affine():
            return request(paths["none"], args.steps, rng)

    variants["norm affine (bound)"] = bounded_affine
    times: dict[str, dict[str, list[float]]] = {n: {s: [] for s in STAGES} for n in variants}
    names = list(variants)
    for name in names:  # one untimed request each: first-touch costs out of the rounds
        variants[name]()
    load_before = os.getloadavg()
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            t = variants[name]()
            for s in STAGES:
                times[name][s].append(t[s])
        print(f"round {r + 1}/{args.rounds} load {os.getloadavg()[0]:.2f}", flush=True)
    load_after = os.getloadavg()
    med = {n: {s: statistics.median(v) for s, v in st.items()} for n, st in times.items()}
    base = med["none"]
    lines = [
        "# Folds end to end: seconds per stage with and without each fold",
        "",
        f"`python bench/fold_stages.py --vision-layers {args.vision_layers} --llm-layers "
        f"{args.llm_layers} --rounds {args.rounds} --steps {args.steps}`, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{load_before[0]:.2f} before / {load_after[0]:.2f} after (1 min). MiniCPM-V 2.6 widths, "
        f"{args.vision_layers} of 27 vision blocks, {args.llm_layers} of 28 decoder layers, "
        "vocabulary 2048; raw bf16 containers, warm page cache, `--budget 1G` streamed as "
        "`wstream run` does; one 448 x 448 slice, 80 prefill positions; median of "
        f"{args.rounds} interleaved rounds. Ratios: the variant's median / the unfolded "
        "container's in the same process (below 1 is faster).",
        "",
        "| variant | " + " | ".join(f"{s} s | {s} ratio" for s in STAGES) + " |",
        "|---|" + "---|---|" * len(STAGES),
    ]
    for name, st in med.items():
        cells = []
        for s in STAGES:
            if s in st:
                cells += [f"{st[s]:.3f}", f"{st[s] / base[s]:.3f}"]
            else:
                cells += ["", ""]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    report = "\n".join(lines) + "\n"
    print(report)
    raw = {"args": {k: str(v) for k, v in vars(args).items()}, "times": times}
    (args.data / "fold_stages.json").write_text(json.dumps(raw, indent=1))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
