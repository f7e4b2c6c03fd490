"""y = x @ W.T for a quantized matrix W as stored: INT8 (a scale per group) or uint4 (split
nibbles, a scale and a zero point per group).

The cursor hands a quantized row block over as stored (:class:`~wstream.format.quant.QuantPiece`,
zero-copy from the loader), and these kernels widen or unpack it in pieces of ``*_ELEMENTS``
values into their own float32 scratch, a piece at a time, so the model is never held in float32
and each piece is used right after it is made:

- **decode and short prefill** (at most ``PARTIAL_MAX_ROWS`` rows of x): the integers are only
  cast, never shifted or scaled. With ``P[g] = x_g @ q_g.T`` the per-group partial products,
  ``y = sum_g s_g * P[g]`` (INT8) or ``sum_g s_g * P[g] - xsum @ (s * z).T`` (uint4: the zero
  points fold into one small product of the per-group sums of x); the scales apply to the
  [groups, T, rows] partials. The pieces are split over the cores, each with a one-thread BLAS.
- **long prefill** (the vision encoder's 1024 patches): ``(q - z) * s`` in place on the
  widened piece (:func:`~wstream.format.quant.apply_scales`, the one copy of that arithmetic),
  then one matmul.

Every path sees only the stored bytes and the same pieces, so a streamed and an eager forward
give the same bits. Figures: ``bench/results/QUANT.md`` sections 5 and 6.
"""

from __future__ import annotations

import numpy as np

from wstream.format.quant import QuantPiece, apply_scales
from wstream.format.uint4 import unpack_uint4
from wstream.model.fast import PARALLEL_MIN, _blas_controller, _cores, parallel_pool, widen_into

# Up to this many rows of x the partial-product path runs; above, (q - z) * s and a matmul.
# uint4, measured at [T, 3584] @ [3584, 18944] against bf16 (bench/results/QUANT.md section 5):
# T = 1, 0.34x; T = 80, 0.71x (the other path 1.36x); T = 448, 19x (the other path 1.23x).
# INT8 (section 1): at 448 rows its partial products cost 4.7x, scaling the weights 1.0x.
# Both were measured with 128K-value pieces, before DECODE_ELEMENTS grew to 1M; not re-measured.
PARTIAL_MAX_ROWS = 80
INT8_PARTIAL_MAX_ROWS = 8
# float32 elements unpacked per piece. Partial products, quiet machine, both cores, one
# [18944, 3584] decode product (bench/results/QUANT.md section 6): 1M values (4 MiB) per piece
# measured INT8 34 ms and uint4 52 ms, against 54 / 125 ms for 128K (each call's Python and
# the GIL dominate small pieces when two threads share them), 46 / 59 for 2M, 62 / 83 for 4M.
# The matmul path wants large products: 4M measured 1.36x at T = 80 against 2.73x for 1M.
DECODE_ELEMENTS = 1 << 20
PREFILL_ELEMENTS = 1 << 22


def quant_matmul_t(x: np.ndarray, w: QuantPiece, out: np.ndarray) -> None:
    """``out`` [T, rows] = x [T, cols] @ dequantize(W).T for an INT8 or uint4 W [rows, cols]."""
    rows, cols = w.shape
    t = x.shape[0]
    if t > (INT8_PARTIAL_MAX_ROWS if w.zeros is None else PARTIAL_MAX_ROWS):
        _scaled_then_matmul(x, w, out)
        return
    step = max(1, DECODE_ELEMENTS // max(cols, 1))
    starts = list(range(0, rows, step))
    g = cols // w.group
    full = g * w.group
    if w.zeros is None:
        xs = np.ascontiguousarray(x[:, :full].reshape(t, g, w.group).transpose(1, 0, 2))
        xsum = None  # [g, T, group] above; no zero points
    else:
        xg = x[:, :full].reshape(t, g, 2, w.group // 2)  # a group's halves: low, high nibbles
        xs = np.ascontiguousarray(xg.transpose(2, 1, 0, 3))  # [2, g, T, half]
        xsum = xg.sum(axis=(2, 3))  # [T, g]
        if full < cols:
            xsum = np.concatenate([xsum, x[:, full:].sum(axis=1, keepdims=True)], axis=1)

    def run(first: int, last: int) -> None:  # pieces [first, last), each thread its own scratch
        scratch = np.empty(min(step, rows) * cols, np.float32)
        for r0 in starts[first:last]:
            r1 = min(r0 + step, rows)
            if xsum is None:
                _int8_partials(x, xs, w, r0, r1, scratch, out)
            else:
                _uint4_partials(x, xs, xsum, w, r0, r1, scratch, out)

    # The casts are most of the work and single-threaded numpy: the pieces are split over the
    # cores (the bf16 path widens on both too), each with a one-thread BLAS for its small
    # products. The pieces are the same either way, so the bits are too.
    if _cores() > 1 and len(starts) > 1 and rows * cols >= PARALLEL_MIN:
        half = len(starts) // 2
        with _blas_controller().limit(limits=1, user_api="blas"):
            list(parallel_pool().map(run, [0, half], [half, len(starts)]))
    else:
        run(0, len(starts))


def _int8_partials(
    x: np.ndarray,
    xs: np.ndarray,
    w: QuantPiece,
    r0: int,
    r1: int,
    scratch: np.ndarray,
    out: np.ndarray,
) -> None:
    """Columns [r0, r1) of ``out``: sum_g s_g * (x_g @ q_g.T) for INT8 rows; ``xs`` is x's full
    groups as [g, T, group]."""
    cols = w.values.shape[1]
    g = xs.shape[0]
    full = g * w.group
    n = r1 - r0
    s = w.scales[r0:r1]  # [n, G]
    o = out[:, r0:r1]  # [T, n]
    q = scratch[: n * cols].reshape(n, cols)
    np.copyto(q, w.values[r0:r1], casting="unsafe")  # int8 -> float32, exact, in cache
    if g:
        part = np.matmul(xs, q[:, :full].reshape(n, g, w.group).transpose(1, 2, 0))  # [g, T, n]
        _scaled_sum(part, s, o)
    else:
        o[...] = 0
    if full < cols:
        _add_tail(x[:, full:], q[:, full:], s, o)


def _uint4_partials(
    x: np.ndarray,
    x2: np.ndarray,
    xsum: np.ndarray,
    w: QuantPiece,
    r0: int,
    r1: int,
    scratch: np.ndarray,
    out: np.ndarray,
) -> None:
    """Columns [r0, r1) of ``out``: sum_g s_g * (x_g @ q_g.T) - xsum @ (s * z).T.

    The low and high nibbles are cast into two contiguous planes (a flat cast loop; writing
    them into their places in a group measured twice as slow), and each plane meets its half of
    every group of x: one 4-d matmul, [2, g, T, half] @ [2, g, half, n]."""
    assert w.zeros is not None
    cols = w.cols
    g, half = x2.shape[1], w.group // 2
    full = g * w.group
    n = r1 - r0
    p = w.values[r0:r1]  # [n, ceil(cols / 2)]
    s = w.scales[r0:r1]  # [n, G]
    o = out[:, r0:r1]  # [T, n]
    if g:
        packed = p[:, : g * half]
        planes = scratch[: n * full].reshape(2, n, g, half)
        np.copyto(planes[0], (packed & np.uint8(15)).reshape(n, g, half), casting="unsafe")
        np.copyto(planes[1], (packed >> np.uint8(4)).reshape(n, g, half), casting="unsafe")
        part = np.matmul(x2, planes.transpose(0, 2, 3, 1))  # [2, g, T, n]
        _scaled_sum(np.add(part[0], part[1], out=part[0]), s, o)  # the planes: [g, T, n]
    else:
        o[...] = 0
    if full < cols:
        q = scratch[n * full : n * cols].reshape(n, cols - full)
        unpack_uint4(p[:, g * half :], cols - full, w.group, q)
        _add_tail(x[:, full:], q, s, o)
    o -= xsum @ (s * w.zeros[r0:r1].astype(np.float32)).T  # [T, G] @ [G, n]: zero points


def _scaled_sum(part: np.ndarray, s: np.ndarray, o: np.ndarray) -> None:
    """``o`` [T, n] = sum over groups g of ``s[:, g]`` x ``part[g]`` ([g, T, n] partials, scaled
    in place)."""
    part *= s[:, : part.shape[0]].T[:, None, :]  # x [g, 1, n]
    np.sum(part, axis=0, out=o)


def _add_tail(x_tail: np.ndarray, q_tail: np.ndarray, s: np.ndarray, o: np.ndarray) -> None:
    """``o`` += the last, partial group's product, scaled: [T, c] @ [n, c].T x s[:, -1]."""
    tail = x_tail @ q_tail.T  # [T, n]
    tail *= s[:, -1]
    o += tail


def _scaled_then_matmul(x: np.ndarray, w: QuantPiece, out: np.ndarray) -> None:
    """Many rows of x: (q - z) * s on each widened piece, then one (threaded BLAS) matmul."""
    rows, cols = w.shape
    step = max(1, PREFILL_ELEMENTS // max(cols, 1))
    scratch = np.empty(min(step, rows) * cols, np.float32)
    for r0 in range(0, rows, step):
        r1 = min(r0 + step, rows)
        q = scratch[: (r1 - r0) * cols].reshape(r1 - r0, cols)
        if w.zeros is None:
            widen_into(q, w.values[r0:r1])  # int8 -> float32 on every core
            apply_scales(q, w.scales[r0:r1], w.group)
        else:
            unpack_uint4(w.values[r0:r1], cols, w.group, q)
            apply_scales(q, w.scales[r0:r1], w.group, w.zeros[r0:r1])
        np.matmul(x, q.T, out=out[:, r0:r1])
