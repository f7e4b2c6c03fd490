"""Several image slices in one request: one pass over the vision weights, each slice its own.

The stacked tower (every slice's rows through each layer before the next layer) must equal the
tower run on each slice alone, and the loader must hand out each vision and resampler chunk
exactly once per request however many slices there are.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from model_helpers import SMALL_CHUNK, pack_to

from wstream.container.reader import Container
from wstream.errors import InputError
from wstream.model import resampler, vision
from wstream.model.config import from_hf
from wstream.model.schedule import execution_order
from wstream.model.vlm import generate, generate_tokens
from wstream.model.weights import walk
from wstream.stream.loader import EagerWeights, StreamingLoader
from wstream.synthetic import write_checkpoint

SIZES = [(28, 42), (56, 28), (14, 14), (42, 70)]  # (H, W) of slices of different shapes


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("multislice")
    ckpt = write_checkpoint(root / "ckpt", "tiny", seed=5, shards=2).directory
    return pack_to(ckpt, root / "tiny.wst", codec="raw", max_chunk=SMALL_CHUNK)


def slices_of(sizes: Sequence[tuple[int, int]], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, (3, h, w)).astype(np.float32) for h, w in sizes]


def tower(source: Any, slices: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Vision features and resampler outputs of ``slices`` taken together."""
    cfg = from_hf(source.config)
    plans = {p.name: p for p in execution_order(source.tensor_names)}
    groups = ["vision.embed"] + [f"vision.layer.{i}" for i in range(cfg.vision.layers)]
    groups += ["vision.post_norm", "resampler"]
    with closing(walk(source, [(g, plans[g].prefix, None) for g in groups])) as cursors:
        feats = vision.encode(slices, cursors, cfg.vision)
        grids = [(px.shape[1] // 14, px.shape[2] // 14) for px in slices]
        return feats, resampler.resample(feats, grids, next(cursors), cfg.resampler)


def test_stacked_slices_equal_each_slice_alone(container: Path) -> None:
    slices = slices_of(SIZES)
    with Container(container) as c:
        source = EagerWeights(c)
        feats, tokens = tower(source, slices)
        for n, px in enumerate(slices):
            (alone,), (alone_tokens,) = tower(source, [px])
            h, w = px.shape[1] // 14, px.shape[2] // 14
            assert feats[n].shape == alone.shape == (h * w, 64)
            scale = np.abs(alone).max()
            np.testing.assert_allclose(feats[n], alone, rtol=0, atol=2e-6 * scale)
            assert tokens[n].shape == alone_tokens.shape == (64, 256)
            scale = np.abs(alone_tokens).max()
            np.testing.assert_allclose(tokens[n], alone_tokens, rtol=0, atol=2e-6 * scale)


def test_slices_do_not_attend_to_each_other(container: Path) -> None:
    """Changing one slice leaves every other slice's features as they were."""
    slices = slices_of(SIZES)
    changed = [s.copy() for s in slices]
    changed[1] = -changed[1]
    with Container(container) as c:
        source = EagerWeights(c)
        feats, _ = tower(source, slices)
        feats2, _ = tower(source, changed)
    for n in (0, 2, 3):
        np.testing.assert_array_equal(feats[n], feats2[n])
    assert not np.allclose(feats[1], feats2[1])


class Counting:
    """A weight source that counts every chunk it hands out."""

    def __init__(self, inner: StreamingLoader) -> None:
        self.inner = inner
        self.handed: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def config(self) -> Any:
        return self.inner.config

    @property
    def tensor_names(self) -> Any:
        return self.inner.tensor_names

    def stream(self, chunks: Sequence[str], *, repeat: bool = False) -> Iterator[Any]:
        inner = self.inner.stream(chunks, repeat=repeat)
        try:
            for chunk in inner:
                self.handed[chunk.name] += 1
                yield chunk
        finally:
            close = getattr(inner, "close", None)
            if close is not None:
                close()


@pytest.mark.parametrize("n_slices", [1, 4, 10])
def test_one_pass_over_vision_weights(container: Path, n_slices: int) -> None:
    queries = 64
    sizes = [SIZES[i % len(SIZES)] for i in range(n_slices)]
    slices = slices_of(sizes, seed=n_slices)
    ids = np.arange(5 + n_slices * (queries + 2)) % 1000
    bounds = [(3 + i * (queries + 2), 3 + i * (queries + 2) + queries) for i in range(n_slices)]
    budget = 1 << 20
    with Container(container) as c:
        loader = StreamingLoader(c, budget=budget, prefetch=2)
        counting = Counting(loader)
        try:
            generate(counting, ids, slices=slices, image_bounds=bounds, max_new_tokens=2)
            vision_chunks = [
                ch.name
                for ch in c.manifest.chunks
                if ch.group.startswith("vision") or ch.group == "resampler"
            ]
            assert len(vision_chunks) > 10  # the tiny model split in 64 KiB chunks
            assert {n: counting.handed[n] for n in vision_chunks} == dict.fromkeys(vision_chunks, 1)
            assert loader.pool.peak <= budget
        finally:
            loader.close()


def test_multislice_streamed_equals_eager(container: Path) -> None:
    slices = slices_of(SIZES, seed=3)
    ids = np.arange(300) % 1000
    bounds = [(2, 66), (70, 134), (135, 199), (210, 274)]
    with Container(container) as c:
        eager = generate(EagerWeights(c), ids, slices=slices, image_bounds=bounds, max_new_tokens=3)
        loader = StreamingLoader(c, budget=1 << 20, prefetch=2)
        try:
            streamed = generate(loader, ids, slices=slices, image_bounds=bounds, max_new_tokens=3)
        finally:
            loader.close()
    np.testing.assert_array_equal(eager.logits, streamed.logits)
    assert eager.tokens == streamed.tokens


def test_generate_tokens_stops_when_told(container: Path) -> None:
    with Container(container) as c:
        source = EagerWeights(c)
        full = generate(source, [1, 2, 3], max_new_tokens=6)
        steps = generate_tokens(source, [1, 2, 3], max_new_tokens=6)
        got = [next(steps), steps.send(False), steps.send(False)]
        with pytest.raises(StopIteration) as done:
            steps.send(True)
    assert got == full.tokens[:3]
    assert done.value.value.tokens == full.tokens[:3]
    # keep_logits=False: only the last prefill row, same tokens
    with Container(container) as c:
        last = generate(EagerWeights(c), [1, 2, 3], max_new_tokens=6, keep_logits=False)
    assert last.tokens == full.tokens
    assert last.logits.shape == (1, full.logits.shape[1])
    np.testing.assert_allclose(last.logits[0], full.logits[-1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("bounds", "message"),
    [
        ([(2, 66)], "1 spans for 2"),  # one span for two slices
        ([(2, 66), (40, 104)], "after the previous span"),  # overlapping
        ([(2, 66), (70, 130)], "exactly 64"),  # too short
    ],
)
def test_bad_spans_are_named_errors(
    container: Path, bounds: list[tuple[int, int]], message: str
) -> None:
    slices = slices_of([(14, 14), (28, 28)])
    with Container(container) as c, pytest.raises(InputError, match=message):
        generate(EagerWeights(c), np.arange(200), slices=slices, image_bounds=bounds)
