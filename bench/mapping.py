"""Mapped or read: what reading chunks with ``pread`` instead of a shared ``mmap`` costs.

A shared map of the container turns a truncation by another process into SIGBUS and lets an
in-place rewrite reach the consumer after the CRC was checked; ``pread`` into the loader's own
slabs does neither (see ``wstream.container.source.LocalFile``). This measures the price on the
loader's hot paths, on a ~1 GiB raw container (32 chunks of 32 MiB of bf16), page cache warm:

- ``stream``: ``Container.stream()`` over every chunk, verify on and off; the consumer either
  releases each chunk at once or reads every byte of it (what a matmul does);
- ``decode loop``: the forward's pattern, ``StreamingLoader(widen=DEQUANTIZE)`` walking the
  chunks ``repeat=True`` under a budget of about half the model, the consumer reading every
  byte; seconds per pass after the first;
- ``tensor``: ``Container.tensor()`` of every tensor (a copy either way).

Usage: ``python bench/mapping.py [--dir DIR] [--repeat N]``; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from wstream import open_container
from wstream.pack import pack
from wstream.stream.loader import StreamingLoader
from wstream.stream.plan import Widen

MiB = 1 << 20


def make(directory: Path) -> Path:
    wst = directory / "one_gib.wst"
    if wst.exists():
        return wst
    rng = np.random.default_rng(0)
    tensors = {
        f"layers.{i}.w": rng.integers(0, 1 << 16, (4096, 4096), dtype=np.uint16).view(np.float16)
        for i in range(32)
    }
    src = directory / "one_gib.safetensors"
    save_file(tensors, src)
    del tensors
    pack(src, wst, codec="raw", max_chunk=32 * MiB)
    src.unlink()
    return wst


def touch(arrays: list[np.ndarray]) -> None:
    for a in arrays:
        if a.nbytes:
            np.bitwise_or.reduce(a.reshape(-1).view(np.uint8).view(np.uint64))


def stream_once(path: Path, mapped: bool, verify: bool, read: bool) -> float:
    with open_container(path, mapped=mapped) as c:
        t0 = time.perf_counter()
        for chunk in c.stream(verify=verify, budget=160 * MiB):
            with chunk:
                if read:
                    touch(list(chunk.arrays()))
        return time.perf_counter() - t0


def decode_loop(path: Path, mapped: bool, verify: bool, passes: int = 3) -> float:
    with open_container(path, mapped=mapped) as c:
        names = [ch.name for ch in c.manifest.chunks]
        budget = sum(ch.raw_nbytes for ch in c.manifest.chunks) // 2
        with StreamingLoader(c, budget=budget, widen=Widen.DEQUANTIZE, verify=verify) as w:
            times = []
            for _ in range(passes):
                t0 = time.perf_counter()
                for chunk in w.stream(names, repeat=True):
                    with chunk:
                        touch(list(chunk.arrays()))
                times.append(time.perf_counter() - t0)
        return statistics.median(times[1:])


def tensors_once(path: Path, mapped: bool, verify: bool) -> float:
    with open_container(path, mapped=mapped) as c:
        t0 = time.perf_counter()
        for name in c.keys():
            c.tensor(name, verify=verify)
        return time.perf_counter() - t0


def timed(fn: Callable[[], float]) -> tuple[float, float]:
    """(wall seconds the function reports, CPU seconds of every thread of this process)."""
    c0 = time.process_time()
    wall = fn()
    return wall, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    directory = args.dir or Path(tempfile.mkdtemp(prefix="wstream-mapping-"))
    directory.mkdir(parents=True, exist_ok=True)
    path = make(directory)
    gib = path.stat().st_size / (1 << 30)
    rows: list[tuple[str, str, Callable[[bool], float]]] = []
    for verify in (True, False):
        v = "on" if verify else "off"
        rows.append(
            ("stream, release at once", v, lambda m, v=verify: stream_once(path, m, v, False))
        )
        rows.append(
            ("stream, read every byte", v, lambda m, v=verify: stream_once(path, m, v, True))
        )
        rows.append(("decode loop, s/pass", v, lambda m, v=verify: decode_loop(path, m, v)))
        rows.append(("tensor() of every tensor", v, lambda m, v=verify: tensors_once(path, m, v)))
    print(f"container: {path} ({gib:.2f} GiB raw); medians of {args.repeat}, seconds")
    print()
    print("| path | verify | mmap wall | pread wall | ratio | mmap CPU | pread CPU | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for label, v, fn in rows:
        # Interleave the two, so drift in the machine's load hits both alike.
        mm, pr = [], []
        fn(True), fn(False)
        for _ in range(args.repeat):
            mm.append(timed(functools.partial(fn, True)))
            pr.append(timed(functools.partial(fn, False)))
        a, b = (statistics.median(w for w, _ in x) for x in (mm, pr))
        ca, cb = (statistics.median(c for _, c in x) for x in (mm, pr))
        print(
            f"| {label} | {v} | {a:.3f} | {b:.3f} | {b / a:.2f}x "
            f"| {ca:.3f} | {cb:.3f} | {cb / ca:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
