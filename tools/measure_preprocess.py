"""Measure image preprocessing for a 1344x1344 photo (10 slices at 448): load, slice, normalise.

    python tools/measure_preprocess.py [--runs 15]

Writes a synthetic photo-like JPEG (smooth colour fields plus noise, quality 90) to a temporary
directory and prints the median of each stage. The elementwise float32 normalisation is timed in
the same run as the table one, so their ratio holds on a busy machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from wstream.pipeline.image import (
    PreprocessorConfig,
    load_image,
    normalise,
    preprocess,
    slice_geometry,
    slice_images,
)


def median_ms(f: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def elementwise(image: Image.Image) -> np.ndarray:
    x = np.asarray(image, dtype=np.float32) / np.float32(255)
    x = (x - np.float32([0.5] * 3)) / np.float32([0.5] * 3)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    runs = ap.parse_args().runs
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:1344, 0:1344] / 1344.0
    base = np.stack([np.sin(7 * x + 3 * y), np.cos(5 * y - 2 * x), np.sin(11 * x * y)], -1)
    pixels = np.clip(base * 90 + 128 + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    cfg = PreprocessorConfig()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "photo1344.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        img = load_image(path)
        geom = slice_geometry(img.size, cfg)
        slices = slice_images(img, geom)
        assert all(np.array_equal(elementwise(s), normalise(s, cfg)) for s in slices)

        def decode() -> None:
            with Image.open(path) as im:
                im.load()

        rows = [
            ("JPEG decode only", median_ms(decode, runs)),
            ("load_image (decode + RGB)", median_ms(lambda: load_image(path), runs)),
            (
                "slice_images (resizes, crops)",
                median_ms(lambda: slice_images(img, geom), runs),
            ),
            ("normalise x10 (table)", median_ms(lambda: [normalise(s, cfg) for s in slices], runs)),
            (
                "normalise x10 (elementwise)",
                median_ms(lambda: [elementwise(s) for s in slices], runs),
            ),
            ("preprocess (slice + normalise)", median_ms(lambda: preprocess(img, cfg), runs)),
            ("load_image + preprocess", median_ms(lambda: preprocess(load_image(path), cfg), runs)),
        ]
    print(f"1344x1344 JPEG: grid {geom.grid}, {geom.n_slices} slices, median of {runs} runs")
    for name, ms in rows:
        print(f"  {name:40s} {ms:8.1f} ms")


if __name__ == "__main__":
    main()
