"""Decoder layers at MiniCPM-V 2.6 widths streamed from disk: seconds per decode step by layout.

A synthetic checkpoint with the real decoder widths (hidden 3584, intermediate 18944, 28 query
and 4 key/value heads) but only ``--layers`` layers and a small vocabulary, packed raw bf16, INT8
and uint4 (raw codec, so all are served zero-copy from the page cache). Each round streams every
layer once for one new position after an 80-position cache (a decode step) and, with
``--prefill``, for 80 positions, under ``--budget``; the layouts run interleaved round by round
and the medians are reported as ratios to raw bf16, since the machine is shared::

    python bench/quant_decode.py [--layers 2] [--rounds 5] [--data /tmp/wstream-quant-bench]

Rows: ``raw`` (bf16, widened in cache by the cursor), ``int8 dequantize`` (the old path: the
loader's workers dequantize to float32 slabs), ``int8 quantized`` (int8 handed to the forward,
scales applied to per-group partial products or, for many positions, to the weights in cache),
``uint4 quantized`` (the packed bytes, scales and zero points handed to the forward, unpacked in
cache by ``wstream.model.quant_kernel``). ``--only`` picks rows, e.g. ``--only raw uint4``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "1")  # as the wstream console script does

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from wstream.container.reader import Container
from wstream.model import decoder
from wstream.model.config import from_hf
from wstream.model.ops import rope_tables
from wstream.model.schedule import execution_order
from wstream.model.weights import walk
from wstream.pack import pack
from wstream.stream.loader import StreamingLoader
from wstream.synthetic import _vlm, write_checkpoint

CONTEXT = 80  # 64 image tokens + 16 text tokens, as bench/full_model.py


def prepare(data: Path, layers: int) -> dict[str, Path]:
    cfg = _vlm((64, 128, 4, 1), (3584, 18944, 28, 4, layers, 1024))
    ckpt = data / f"ckpt-{layers}"
    if not (ckpt / "config.json").exists():
        write_checkpoint(ckpt, cfg, seed=0)
    out = {}
    for name, quantize in (("raw", None), ("int8", "int8"), ("uint4", "uint4")):
        path = data / f"{name}-{layers}.wst"
        if not path.exists():
            pack(ckpt, path, codec="raw", quantize=quantize)
        out[name] = path
    return out


def step(c: Container, widen: str, budget: int, tokens: int) -> float:
    """Seconds to stream every decoder layer once for ``tokens`` new positions."""
    with StreamingLoader(c, budget=budget, prefetch=2, widen=widen) as source:
        cfg = from_hf(source.config).decoder
        plans = {p.name: p for p in execution_order(source.tensor_names)}
        names = [f"llm.layer.{i}" for i in range(cfg.layers)]
        cache = decoder.KVCache.empty(cfg, CONTEXT + tokens)
        cache.length = CONTEXT if tokens == 1 else 0
        x = np.random.default_rng(0).standard_normal((tokens, cfg.hidden), dtype=np.float32)
        rope = rope_tables(np.arange(cache.length, cache.length + tokens), cfg.head_dim, 1e6)
        t0 = time.perf_counter()
        for i, cur in enumerate(walk(source, [(n, plans[n].prefix, None) for n in names])):
            x = decoder.block(x * np.float32(0.1), cur, cfg, cache, i, rope)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--budget", type=int, default=1 << 30)
    ap.add_argument("--prefill", action="store_true")
    ap.add_argument("--data", type=Path, default=Path("/tmp/wstream-quant-bench"))
    ap.add_argument("--only", nargs="+", default=["raw", "int8-dequantize", "int8", "uint4"])
    args = ap.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    paths = prepare(args.data, args.layers)
    every = {
        "raw": ("raw", "quantized"),
        "int8-dequantize": ("int8", "dequantize"),
        "int8": ("int8", "quantized"),
        "uint4": ("uint4", "quantized"),
    }
    rows = [every["raw"]] + [every[k] for k in args.only if k != "raw"]
    for tokens in (1, CONTEXT) if args.prefill else (1,):
        times: dict[tuple[str, str], list[float]] = {r: [] for r in rows}
        with (
            Container(paths["raw"]) as raw,
            Container(paths["int8"]) as q8,
            Container(paths["uint4"]) as q4,
        ):
            opened = {"raw": raw, "int8": q8, "uint4": q4}
            for r in rows:  # warm the page cache
                step(opened[r[0]], r[1], args.budget, tokens)
            for _ in range(args.rounds):
                for r in rows:
                    times[r].append(step(opened[r[0]], r[1], args.budget, tokens))
            sizes = {
                k: sum(ch.nbytes for ch in c.manifest.chunks if ch.group.startswith("llm.layer."))
                for k, c in opened.items()
            }
        load = os.getloadavg()
        base = statistics.median(times["raw", "quantized"])
        kind = "decode step" if tokens == 1 else f"prefill of {tokens}"
        print(
            f"\n{args.layers} decoder layers at 2.6 widths, {kind}, warm, "
            f"--budget {args.budget >> 20} MiB, {args.rounds} rounds (medians); load average "
            f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
        )
        print(f"{'container':8} {'widen':11} {'s/layer':>8} {'x raw':>6} {'MB/layer':>9}")
        for r, ts in times.items():
            med = statistics.median(ts)
            per = sizes[r[0]] / args.layers / 1e6
            print(f"{r[0]:8} {r[1]:11} {med / args.layers:8.3f} {med / base:6.2f} {per:9.1f}")


if __name__ == "__main__":
    main()
