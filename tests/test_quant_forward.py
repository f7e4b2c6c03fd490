"""INT8 weights handed to the forward as stored (``Widen.QUANTIZED``), scales applied in the matmul.

The loader hands a quantized piece out as its int8 values and float32 scales (zero-copy for a raw
chunk); the cursor passes it on as stored and :mod:`wstream.model.quant_kernel` widens the
integers in cache-sized pieces, applying the scales to per-group partial products (few rows of
x) or to the weights (many).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_forward import (  # noqa: F401 (fixture)
    CASES,
    check_quantized_streaming,
    checkpoints,
    pack_quantized,
    rel_err,
    run_case,
)

from wstream.container.reader import Container
from wstream.format.quant import QuantPiece, dequantize_int8, n_groups, quantize_int8
from wstream.format.uint4 import packed_cols, quantize_uint4
from wstream.model import fast
from wstream.model.blockwise import matmul_t
from wstream.model.quant_kernel import DECODE_ELEMENTS, quant_matmul_t
from wstream.model.quant_kernel import INT8_PARTIAL_MAX_ROWS as PARTIAL_MAX_ROWS
from wstream.stream.loader import StreamingLoader
from wstream.stream.plan import Widen


def _quantized(rows: int, cols: int, group: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    w = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    q = np.empty((rows, cols), np.int8)
    s = np.empty((rows, n_groups(cols, group)), np.float32)
    quantize_int8(w, group, q, s)
    return q, s


@given(
    t=st.sampled_from([1, 2, PARTIAL_MAX_ROWS, PARTIAL_MAX_ROWS + 1, 17]),
    rows=st.integers(1, 40),
    cols=st.integers(1, 300),
    group=st.sampled_from([1, 7, 32, 128]),
    seed=st.integers(0, 2**16),
)
def test_matmul_t_applies_each_groups_own_scale(
    t: int, rows: int, cols: int, group: int, seed: int
) -> None:
    """Both kernels (partial products, scales on the weights) equal x @ dequantize(W).T; a scale
    moved to the neighbouring group, or one scale per row, would be off by far more."""
    q, s = _quantized(rows, cols, group, seed)
    x = np.random.default_rng(seed + 1).standard_normal((t, cols)).astype(np.float32)
    w = np.empty((rows, cols), np.float32)
    dequantize_int8(q, s, group, w)
    want = x.astype(np.float64) @ w.T.astype(np.float64)
    out = np.empty((t, rows), np.float32)
    matmul_t(x, QuantPiece(q, s, group), out)
    scale = np.abs(x).sum(axis=1, keepdims=True) * np.abs(w).max()  # bound on |x @ w.T|
    assert np.all(np.abs(out - want) <= 1e-5 * scale + 1e-6)


def test_matmul_t_fails_for_a_misplaced_scale() -> None:
    """The check above is sharp: scales shifted by one group, or one per row, break it."""
    q, s = _quantized(8, 512, 128, 0)
    s[:, 1] *= 3  # distinct groups, so a misplaced scale shows
    x = np.ones((1, 512), np.float32)
    w = np.empty((8, 512), np.float32)
    dequantize_int8(q, s, 128, w)
    want = x @ w.T
    for wrong in (np.roll(s, 1, axis=1), np.repeat(s.max(axis=1, keepdims=True), 4, axis=1)):
        out = np.empty((1, 8), np.float32)
        matmul_t(x, QuantPiece(q, wrong, 128), out)
        assert rel_err(out, want) > 1e-3


@pytest.mark.parametrize("scheme", ["int8", "uint4"])
@pytest.mark.parametrize("t", [1, 3, 100])
def test_kernel_on_both_cores_equals_its_serial_reference_bit_for_bit(scheme: str, t: int) -> None:
    """A matrix of several cache-sized pieces: split over the cores (each piece on one thread,
    one-thread BLAS) or all on the calling thread, the pieces and so the bits are the same."""
    rows, cols, group = 3 * DECODE_ELEMENTS // 500 + 7, 500, 128  # 3 pieces and a short one
    rng = np.random.default_rng(5)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    g = n_groups(cols, group)
    s = np.empty((rows, g), np.float32)
    if scheme == "int8":
        q = np.empty((rows, cols), np.int8)
        quantize_int8(w, group, q, s)
        piece = QuantPiece(q, s, group)
    else:
        p, z = np.empty((rows, packed_cols(cols)), np.uint8), np.empty((rows, g), np.uint8)
        quantize_uint4(w, group, p, s, z)
        piece = QuantPiece(p, s, group, z, cols)
    x = rng.standard_normal((t, cols)).astype(np.float32)
    threaded, serial = np.empty((t, rows), np.float32), np.empty((t, rows), np.float32)
    quant_matmul_t(x, piece, threaded)
    with fast.serial():
        quant_matmul_t(x, piece, serial)
    assert np.array_equal(threaded, serial)
    want = x.astype(np.float64) @ w.T.astype(np.float64)
    assert rel_err(threaded, want) < (0.02 if scheme == "int8" else 0.2)  # quantization error


@pytest.fixture(scope="module")
def int8_containers(
    checkpoints: dict[str, Path],  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[tuple[str, str], Path]:
    return pack_quantized(checkpoints, tmp_path_factory.mktemp("int8"), "int8")


def test_loader_hands_out_quantized_pieces_as_stored(
    int8_containers: dict[tuple[str, str], Path],
) -> None:
    """Under Widen.QUANTIZED a quantized piece is its int8 values and scales, exactly as stored
    (raw chunks zero-copy: nothing is widened by the workers); every other piece as stored."""
    with Container(int8_containers["tiny", "raw"]) as c:
        names = [ch.name for ch in c.manifest.chunks]
        with StreamingLoader(c, budget=None, widen=Widen.QUANTIZED) as loader:
            seen = 0
            for chunk in loader.stream(names):
                entry = loader.entry(chunk.name)
                for t, a in zip(entry.tensors, chunk.arrays()):
                    if t.quant is None:
                        assert isinstance(a, np.ndarray) and a.dtype == t.dtype.numpy
                        continue
                    assert isinstance(a, QuantPiece) and a.values.dtype == np.int8
                    assert a.values.shape == t.piece_shape
                    assert a.scales.shape == t.scales_shape and a.group == t.quant.group
                    want = np.empty(t.piece_shape, np.float32)
                    dequantize_int8(a.values, a.scales, a.group, want)
                    r0, r1 = t.rows if t.rows is not None else (0, t.shape[0])
                    got = c.tensor(t.name)[r0:r1]  # the reader's dequantisation, rounded
                    assert np.array_equal(want.astype(got.dtype), got)
                    seen += 1
                chunk.release()
            assert seen and loader.stats.bytes_widened == 0


@pytest.mark.parametrize("codec", ["raw", "zstd"])
@pytest.mark.parametrize("name", CASES)
def test_quantized_streamed_equals_eager(
    name: str, codec: str, int8_containers: dict[tuple[str, str], Path]
) -> None:
    """INT8 handed to the forward: streamed (budgets, prefetch, poisoned slabs) is bit-identical
    to eager with the same pieces, and close to the float forward (cosine, top-1, greedy)."""
    case = CASES[name]
    path = int8_containers[name, codec]
    eager = check_quantized_streaming(
        path, case, ((0, 0), (2, 0), (2, None)), max_rel=1e-5, min_cosine=0.999
    )
    assert np.argmax(eager.logits[-1]) == np.argmax(case.logits[-1])
