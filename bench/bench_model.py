"""One vision block and one decoder layer of the numpy forward, weights already in RAM.

The harness's default widths (``bench/_harness_data.py``: SigLIP 768/3072 with 12 heads, Qwen2
1536/4096 with 12 query and 2 key/value heads): a vision block over one 448 x 448 slice (1024
patches), and a decoder layer in prefill (80 positions: 64 image + 16 text) and in a decode step
(1 position after 80). Weights are random float32 served by the harness's in-RAM source, so these
time compute only; ``extra_info["gflop"]`` gives the matmul work, and the terminal summary's
MB/s is of float32 weights per second (what a weight stream must sustain to keep up).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from _contenders import DictWeights

from wstream.model import decoder, vision
from wstream.model.config import tensor_shapes, to_hf
from wstream.model.ops import rope_tables
from wstream.model.schedule import execution_order
from wstream.model.weights import walk
from wstream.synthetic import _vlm

CFG = _vlm((768, 3072, 12, 1), (1536, 4096, 12, 2, 1, 32000))
PATCHES = 1024  # (448 / 14) ** 2
PROMPT = 80  # 64 resampler tokens + 16 text tokens


def _group_weights(group: str) -> DictWeights:
    """A source holding one group of CFG, random float32."""
    shapes = tensor_shapes(CFG)
    plan = next(p for p in execution_order(shapes) if p.name == group)
    rng = np.random.default_rng(0)
    arrays = {}
    for name in plan.tensor_names:
        a = rng.standard_normal(shapes[name], dtype=np.float32)
        a *= np.float32(1.0 if a.ndim == 1 else 0.02)
        arrays[name] = a
    return DictWeights(to_hf(CFG), arrays, [plan])


def _nbytes(source: DictWeights) -> int:
    return sum(a.nbytes for a in source.arrays.values())


def _cursor(source: DictWeights, group: str) -> Any:
    plan = source.plans[group]
    return walk(source, [(group, plan.prefix, None)])


def test_vision_block(benchmark: Any, throughput: Any) -> None:
    source = _group_weights("vision.layer.0")
    cfg = CFG.vision
    x = np.random.default_rng(1).standard_normal((PATCHES, cfg.hidden), dtype=np.float32)
    throughput(_nbytes(source))

    def run() -> np.ndarray:
        cursors = _cursor(source, "vision.layer.0")
        try:
            return vision.block(x, next(cursors), cfg, [(0, x.shape[0])])
        finally:
            cursors.close()

    out = benchmark(run)
    assert out.shape == x.shape and np.isfinite(out).all()
    d, i = cfg.hidden, cfg.intermediate
    benchmark.extra_info["gflop"] = (
        2 * PATCHES * (4 * d * d + 2 * d * i) + 4 * PATCHES * PATCHES * d
    ) / 1e9


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_decoder_layer(benchmark: Any, throughput: Any, phase: str) -> None:
    source = _group_weights("llm.layer.0")
    cfg = CFG.decoder
    rng = np.random.default_rng(2)
    past, new = (0, PROMPT) if phase == "prefill" else (PROMPT, 1)
    x = rng.standard_normal((new, cfg.hidden), dtype=np.float32)
    cache = decoder.KVCache.empty(cfg, PROMPT + 1)
    rope = rope_tables(np.arange(past, past + new), cfg.head_dim, cfg.rope_theta)
    throughput(_nbytes(source))

    def run() -> np.ndarray:
        cache.length = past  # every round writes the same positions of the cache
        cursors = _cursor(source, "llm.layer.0")
        try:
            return decoder.block(x, next(cursors), cfg, cache, 0, rope)
        finally:
            cursors.close()

    out = benchmark(run)
    assert out.shape == x.shape and np.isfinite(out).all()
    d, i, kv = cfg.hidden, cfg.intermediate, cfg.kv_heads * cfg.head_dim
    benchmark.extra_info["gflop"] = 2 * new * (2 * d * d + 2 * d * kv + 3 * d * i) / 1e9
